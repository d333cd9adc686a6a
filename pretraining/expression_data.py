"""Single-cell corpora for masked expression pretraining: AnnData ``.h5ad`` raw counts in,
batches of cells out.

`ExpressionCorpus` reads one or more ``.h5ad`` files with the same genes, given as paths or
as names (``pbmc68k_reduced`` from the scanpy wheel, whose raw counts are recovered as
``rint(expm1(raw.X) * n_counts / 1e4)``; the project's shared files ``pbmc3k``,
``pbmc-3chem`` and ``mouse-10k`` where ``$BIOZOO_SHARED_DATA``, by default
``../shared/data`` beside the checkout, holds them). The counts must be non-negative
integers: normalised or log data is refused, because the model's tokenizer normalises
itself. A fixed random ``val_fraction`` of the cells is held out. The gene vocabulary is
the files' gene names, and `ExpressionCorpus.fit_tokenizer` fits the per-gene medians on
the training cells only.

`CellBatches` draws cells: cell ``row`` of step ``step`` depends only on
``(seed, step, row)``, as for DNA (`pretraining.dna_data`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pretraining.dna_data import TRAIN, VALIDATION
from pretraining.provenance import Source
from pretraining.sources import dataset_names, local_source, sha256_of
from zoo.expression.gene_tokenizer import GeneTokenizer

SHARED_FILES = {
    "pbmc3k": "pbmc3k_2000hvg_counts.h5ad",
    "pbmc-3chem": "pbmc_3chem_counts.h5ad",
    "mouse-10k": "mouse_10k_1000genes_counts.h5ad",
}
RECOVERED_FROM_LOG = {"pbmc68k_reduced"}
SPLIT_SEED = 20240601  # the held-out cells do not change with the training seed


class ExpressionDataError(ValueError):
    """An expression corpus is missing or does not hold raw integer counts."""


def shared_data_dir() -> Path:
    """``$BIOZOO_SHARED_DATA``, or ``../shared/data`` beside the checkout."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("BIOZOO_SHARED_DATA", default))


def resolve(source: str) -> tuple[Path, str | None]:
    """The local path of `source` (an existing path, a file of ``SHARED_FILES`` or a
    catalogued .h5ad dataset) and its licence when it is catalogued."""
    if source in SHARED_FILES and not os.path.exists(source):
        path = shared_data_dir() / SHARED_FILES[source]
        if not path.is_file():
            raise ExpressionDataError(f"{source!r} is not present at {path}")
        return path, None
    found = local_source(source, (".h5ad",))
    if found is None:
        known = sorted([*SHARED_FILES, *dataset_names((".h5ad",))])
        raise ExpressionDataError(
            f"{source!r} is neither an existing .h5ad file nor a known dataset; known: {known}"
        )
    return found


def read_counts(source: str, path: Path) -> tuple[sp.csr_matrix, list[str]]:
    """The (cells, genes) raw count matrix of an .h5ad and its gene names.

    Raises:
        ExpressionDataError: when ``X`` holds negative, non-finite or non-integer values.
    """
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError) as error:
        raise ExpressionDataError(f"{path} is not a readable .h5ad file: {error}") from None
    if source in RECOVERED_FROM_LOG:
        raw = adata.raw.X
        raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
        size = adata.obs["n_counts"].to_numpy()[:, None] / 1e4
        counts = np.rint(np.expm1(raw) * size)
        genes = list(adata.raw.var_names)
    else:
        counts, genes = adata.X, list(adata.var_names)
    counts = sp.csr_matrix(counts, dtype=np.float64)
    values = counts.data
    problem = (
        "non-finite values"
        if not np.all(np.isfinite(values))
        else "negative values"
        if np.any(values < 0)
        else "non-integer values"
        if np.any(values != np.round(values))
        else None
    )
    if problem:
        raise ExpressionDataError(
            f"{path}: X holds {problem}; pretraining needs raw integer counts (not normalised "
            "or log-transformed data)"
        )
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ExpressionDataError(f"{path} holds no cells or no genes (shape {counts.shape})")
    return counts.astype(np.float32), genes


class ExpressionCorpus:
    """Raw counts of one or more .h5ad files with the same genes, split into training and
    held-out cells (cells without any count are dropped).

    Attributes:
        genes: the gene vocabulary (column names, in order).
        cells: ``{TRAIN: csr, VALIDATION: csr}`` count matrices, float32.
        sources: provenance of every file.
    """

    def __init__(self, sources: Sequence[str], *, val_fraction: float = 0.1):
        if not sources:
            raise ExpressionDataError("no expression corpus given")
        if not 0.0 < val_fraction < 1.0:
            raise ExpressionDataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        matrices, self.sources = [], []
        self.genes: list[str] = []
        for source in sources:
            path, licence = resolve(source)
            counts, genes = read_counts(source, path)
            if self.genes and genes != self.genes:
                raise ExpressionDataError(
                    f"{path} has different genes from {self.sources[0].path}; "
                    "all files of a corpus must share one gene list in one order"
                )
            self.genes = genes
            matrices.append(counts)
            summary = f"{counts.shape[0]:,} cells x {counts.shape[1]:,} genes, raw counts"
            self.sources.append(Source(source, str(path), sha256_of(path), summary, licence))
        counts = sp.vstack(matrices, format="csr")
        counts = counts[np.asarray(counts.sum(axis=1)).ravel() > 0]
        order = np.random.default_rng(SPLIT_SEED).permutation(counts.shape[0])
        n_val = max(1, round(val_fraction * counts.shape[0]))
        if counts.shape[0] - n_val < 1:
            raise ExpressionDataError(f"{counts.shape[0]} cells are too few to hold any out")
        self.cells = {
            TRAIN: counts[np.sort(order[n_val:])],
            VALIDATION: counts[np.sort(order[:n_val])],
        }

    @property
    def n_genes(self) -> int:
        """Genes per cell."""
        return len(self.genes)

    def fit_tokenizer(self, tokenizer: GeneTokenizer) -> GeneTokenizer:
        """`tokenizer` with its per-gene medians fitted on the training cells."""
        return tokenizer.fit(self.cells[TRAIN].toarray())


class CellBatches:
    """Batches of cells of an `ExpressionCorpus` (see the module docstring)."""

    def __init__(self, corpus: ExpressionCorpus, *, seed: int):
        self.corpus = corpus
        self.seed = seed

    def batch(self, step: int, rows: Sequence[int], part: int = TRAIN) -> np.ndarray:
        """Dense (len(rows), n_genes) float32 counts of cells `rows` of `step` (training) or
        of validation batch `step`."""
        cells = self.corpus.cells[part]
        picks = [
            int(np.random.default_rng((self.seed, part, step, row)).integers(cells.shape[0]))
            for row in rows
        ]
        return cells[picks].toarray()
