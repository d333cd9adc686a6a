"""The genes an expression model reads, and the matching of a user's genes to them.

An expression model's input columns are a fixed list of genes. `GeneVocabulary` holds that
list (Ensembl gene IDs, and symbols where known) and is saved beside the weights as
``genes.tsv``: a header line ``gene_id<TAB>symbol``, then one gene per line in column order,
an empty field where a name is unknown.

`GeneVocabulary.match` lines up the columns of a user's count matrix with the vocabulary:

- a name matches case-insensitively, and an Ensembl ID without its version suffix
  (``ENSG00000141510.17`` is ``ENSG00000141510``); symbols keep their dots, since clone-based
  symbols such as ``RP11-34P13.7`` carry one;
- the data's names are its ``var_names`` or any string column of ``var`` (``gene_ids``,
  ``feature_name``, ...); the candidate that matches the most vocabulary genes is used, by
  ID where both the vocabulary and the data have IDs;
- a vocabulary gene missing from the data becomes a column of zeros;
- a vocabulary gene that two data columns claim is an error naming both, not a silent pick;
- below ``min_fraction`` of the vocabulary matched (half by default) the match is refused
  with `GeneMatchError`, because a cell with most of its genes zero-filled gives an embedding
  that looks fine and means little.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse

GENES_FILE = "genes.tsv"
MIN_FRACTION = 0.5
_VERSIONED_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$", re.IGNORECASE)


class GeneMatchError(ValueError):
    """A user's genes cannot be lined up with a model's vocabulary; the message says why."""


def normalise_gene_name(name: str) -> str:
    """``name`` upper-cased and stripped, with an Ensembl ID's version suffix removed."""
    name = str(name).strip().upper()
    versioned = _VERSIONED_ENSEMBL.match(name)
    return versioned.group(1) if versioned else name


@dataclasses.dataclass(frozen=True)
class GeneMatch:
    """How a count matrix's columns line up with a vocabulary.

    Attributes:
        columns: for each vocabulary gene, the data column holding it, or -1 if missing.
        matched_by: the data's names that matched (``"var_names"`` or a ``var`` column) and
            whether they matched the vocabulary's ``"gene_id"`` or ``"symbol"``.
        missing: the vocabulary names (symbol, else ID) of the genes the data lack, most
            expressed first when `GeneVocabulary.match` was given expression levels.
    """

    columns: np.ndarray
    matched_by: tuple[str, str]
    missing: tuple[str, ...]

    @property
    def n_matched(self) -> int:
        """Vocabulary genes found in the data."""
        return int((self.columns >= 0).sum())

    @property
    def fraction(self) -> float:
        """Fraction of the vocabulary found in the data."""
        return self.n_matched / len(self.columns)

    def counts(self, data_counts) -> np.ndarray:
        """The data's (cells, data genes) counts as (cells, vocabulary genes), dense float32,
        with zeros for the missing genes. Only the matched columns are read."""
        found = np.flatnonzero(self.columns >= 0)
        taken = data_counts[:, self.columns[found]]
        if scipy.sparse.issparse(taken):
            taken = taken.toarray()
        out = np.zeros((taken.shape[0], len(self.columns)), np.float32)
        out[:, found] = np.asarray(taken, np.float32)
        return out

    def report(self, *, top: int = 10) -> str:
        """One line: how many genes matched, by which names, and the first `top` missing."""
        field, against = self.matched_by
        text = (
            f"{self.n_matched:,} of {len(self.columns):,} vocabulary genes matched "
            f"({self.fraction:.1%}) by {field} against the vocabulary's {against}"
        )
        if self.missing:
            shown = ", ".join(self.missing[:top])
            more = f" and {len(self.missing) - top:,} more" if len(self.missing) > top else ""
            text += f"; missing (zero-filled): {shown}{more}"
        return text


@dataclasses.dataclass(frozen=True)
class GeneVocabulary:
    """The input genes of an expression model, in column order.

    Attributes:
        gene_ids: Ensembl gene IDs ("" where unknown).
        symbols: gene symbols ("" where unknown).
    """

    gene_ids: tuple[str, ...]
    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.gene_ids) != len(self.symbols):
            raise GeneMatchError(
                f"gene_ids has {len(self.gene_ids)} entries but symbols has {len(self.symbols)}"
            )
        if not self.gene_ids:
            raise GeneMatchError("a gene vocabulary needs at least one gene")
        for i, (gene_id, symbol) in enumerate(zip(self.gene_ids, self.symbols, strict=True)):
            if not (gene_id or symbol):
                raise GeneMatchError(f"gene {i} has neither an ID nor a symbol")
        for field in ("gene_ids", "symbols"):
            names = [normalise_gene_name(n) for n in getattr(self, field) if n]
            duplicated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
            if duplicated:
                raise GeneMatchError(f"{field} repeats {', '.join(duplicated[:5])}")

    @classmethod
    def from_names(cls, names: Sequence[str]) -> GeneVocabulary:
        """A vocabulary from one list of names: Ensembl IDs are recognised as IDs, anything
        else is taken as a symbol."""
        names = [str(n).strip() for n in names]
        is_id = [bool(re.match(r"^ENS[A-Z]*G\d+(\.\d+)?$", n, re.IGNORECASE)) for n in names]
        return cls(
            tuple(n if i else "" for n, i in zip(names, is_id, strict=True)),
            tuple("" if i else n for n, i in zip(names, is_id, strict=True)),
        )

    def __len__(self) -> int:
        return len(self.gene_ids)

    def names(self) -> tuple[str, ...]:
        """Each gene's symbol, or its ID where it has no symbol."""
        return tuple(s or g for g, s in zip(self.gene_ids, self.symbols, strict=True))

    def write(self, path: str | os.PathLike) -> Path:
        """Write ``genes.tsv`` (see the module docstring) to `path` and return it."""
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(("gene_id", "symbol"))
            writer.writerows(zip(self.gene_ids, self.symbols, strict=True))
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> GeneVocabulary:
        """Read a ``genes.tsv`` written by `write`."""
        path = Path(path)
        with path.open(newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or rows[0] != ["gene_id", "symbol"]:
            raise GeneMatchError(f"{path}: the first line must be 'gene_id<TAB>symbol'")
        for number, row in enumerate(rows[1:], 2):
            if len(row) != 2:
                raise GeneMatchError(f"{path}:{number}: expected 2 fields, found {len(row)}")
        try:
            return cls(tuple(r[0] for r in rows[1:]), tuple(r[1] for r in rows[1:]))
        except GeneMatchError as error:
            raise GeneMatchError(f"{path}: {error}") from None

    def match(
        self, var, *, min_fraction: float = MIN_FRACTION, expression: np.ndarray | None = None
    ) -> GeneMatch:
        """Line up a count matrix's genes with this vocabulary (module docstring).

        Args:
            var: the data's genes: an AnnData's ``var`` DataFrame (its index and string
                columns are candidates) or a sequence of names.
            min_fraction: the least fraction of the vocabulary that must match.
            expression: a typical expression level of each vocabulary gene (for a
                Geneformer-style model, its tokenizer's non-zero medians); the missing genes
                are then listed most expressed first. Default: vocabulary order.

        Raises:
            GeneMatchError: too few genes matched, or one vocabulary gene matched two columns.
        """
        candidates = _candidate_names(var)
        best = None
        for against in ("gene_id", "symbol"):
            wanted = self.gene_ids if against == "gene_id" else self.symbols
            index = {normalise_gene_name(n): i for i, n in enumerate(wanted) if n}
            if not index:
                continue
            for field, names in candidates.items():
                hits = [index.get(normalise_gene_name(n), -1) for n in names]
                n_hits = len({h for h in hits if h >= 0})
                if best is None or n_hits > best[0]:
                    best = (n_hits, field, against, names, hits)
        n_hits, field, against, names, hits = best
        columns = np.full(len(self), -1, np.int64)
        for column, gene in enumerate(hits):
            if gene < 0:
                continue
            if columns[gene] >= 0:
                raise GeneMatchError(
                    f"gene {self.names()[gene]!r} appears twice in the data's {field}: "
                    f"{names[columns[gene]]!r} (column {columns[gene]}) and {names[column]!r} "
                    f"(column {column}); make the names unique or drop one"
                )
            columns[gene] = column
        absent = np.flatnonzero(columns < 0)
        if expression is not None:
            absent = absent[np.argsort(-np.asarray(expression)[absent], kind="stable")]
        all_names = self.names()
        missing = tuple(all_names[i] for i in absent)
        result = GeneMatch(columns, (field, against), missing)
        if result.fraction < min_fraction:
            raise GeneMatchError(
                f"only {result.n_matched:,} of {len(self):,} model genes "
                f"({result.fraction:.1%}) are in the data (best: its {field} against the "
                f"model's {against}s), below the {min_fraction:.0%} needed; check that the "
                "data hold the same species and gene naming (e.g. "
                f"{', '.join(self.names()[:3])})"
            )
        return result


def _candidate_names(var) -> dict[str, list[str]]:
    """The data's lists of gene names: ``var_names`` and every string column of ``var``."""
    if hasattr(var, "index") and hasattr(var, "columns"):
        candidates = {"var_names": [str(n) for n in var.index]}
        for column in var.columns:
            values = var[column]
            if values.dtype == object or str(values.dtype) in ("category", "string"):
                candidates[f"var[{column!r}]"] = [str(v) for v in values]
        return candidates
    return {"var_names": [str(n) for n in var]}
