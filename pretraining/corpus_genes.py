"""One gene vocabulary for count files that hold different genes.

`corpus_vocabulary` is the union of the files' genes, in order of first appearance. A
file's genes are its ``var_names``, Ensembl IDs taken as IDs and anything else as symbols
(as `GeneVocabulary.from_names` reads them), completed by an ID column (``gene_ids``,
``gene_id``, ``ensembl_id``) where the names are symbols, or a symbol column
(``gene_symbols``, ``feature_name``, ``symbol``, ``gene_name``) where they are IDs. Genes
are the same gene when their Ensembl IDs agree (version suffix ignored) if every file has
IDs, and otherwise when their symbols agree (case-insensitively).

`match_files` lines each file up with a vocabulary through `GeneVocabulary.match`, which
picks the file's best-matching names; a file that shares no gene with the vocabulary is
refused, naming it. `aligned` rewrites a block of a file's cells into vocabulary columns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from pretraining.count_files import CountFile, ExpressionDataError
from zoo.expression.gene_vocabulary import (
    GeneMatch,
    GeneMatchError,
    GeneVocabulary,
    normalise_gene_name,
)

ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id")
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "symbol", "gene_name")
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d+(\.\d+)?$", re.IGNORECASE)


def file_genes(counts_file: CountFile) -> list[tuple[str, str]]:
    """``(gene_id, symbol)`` of every gene of a file, "" where unknown."""
    var = counts_file.var
    names = [str(n).strip() for n in var.index]
    is_id = [bool(ENSEMBL_ID.match(n)) for n in names]
    ids = [n if i else "" for n, i in zip(names, is_id, strict=True)]
    symbols = ["" if i else n for n, i in zip(names, is_id, strict=True)]
    for column in ID_COLUMNS if not any(ids) else ():
        if column in var.columns:
            ids = [str(v) for v in var[column]]
            break
    for column in SYMBOL_COLUMNS if not any(symbols) else ():
        if column in var.columns:
            symbols = [str(v) for v in var[column]]
            break
    return list(zip(ids, symbols, strict=True))


def corpus_vocabulary(files: Sequence[CountFile]) -> GeneVocabulary:
    """The union of the genes of `files` (see the module docstring).

    Raises:
        ExpressionDataError: naming the file, when a file repeats a gene or has a gene
            without a name.
    """
    genes = [file_genes(f) for f in files]
    by_id = all(all(gene_id for gene_id, _ in file) for file in genes)
    chosen: dict[str, tuple[str, str]] = {}
    symbols_taken: set[str] = set()
    for counts_file, file in zip(files, genes, strict=True):
        seen: set[str] = set()
        for column, (gene_id, symbol) in enumerate(file):
            key = normalise_gene_name(gene_id if by_id else symbol or gene_id)
            if not key:
                raise ExpressionDataError(f"{counts_file.path}: gene {column} has no name")
            if key in seen:
                raise ExpressionDataError(
                    f"{counts_file.path}: the gene {symbol or gene_id!r} is repeated in its "
                    "gene names; make them unique (AnnData.var_names_make_unique)"
                )
            seen.add(key)
            if key in chosen:
                continue
            symbol_key = normalise_gene_name(symbol)
            if symbol and symbol_key in symbols_taken:
                symbol = ""  # one symbol on two IDs: the later ID goes by its ID alone
            symbols_taken.add(symbol_key)
            chosen[key] = (gene_id, symbol)
    return GeneVocabulary(
        tuple(gene_id for gene_id, _ in chosen.values()),
        tuple(symbol for _, symbol in chosen.values()),
    )


def match_files(vocabulary: GeneVocabulary, files: Sequence[CountFile]) -> list[GeneMatch]:
    """Each file's `GeneMatch` against `vocabulary`.

    Raises:
        ExpressionDataError: naming the file, when it shares no gene with the vocabulary or
            two of its columns claim one vocabulary gene.
    """
    matches = []
    for counts_file in files:
        try:
            match = vocabulary.match(counts_file.var, min_fraction=0.0)
        except GeneMatchError as error:
            raise ExpressionDataError(f"{counts_file.path}: {error}") from None
        if match.n_matched == 0:
            raise ExpressionDataError(
                f"{counts_file.path} shares no gene with the corpus's vocabulary of "
                f"{len(vocabulary):,} genes (e.g. {', '.join(vocabulary.names()[:3])}); "
                "check its species and gene naming, or leave it out"
            )
        matches.append(match)
    return matches


def aligned(counts: sp.csr_matrix, match: GeneMatch) -> sp.csr_matrix:
    """A file's (cells, file genes) CSR counts as (cells, vocabulary genes), sparse."""
    found = np.flatnonzero(match.columns >= 0)
    taken = sp.csr_matrix(counts[:, match.columns[found]])
    return sp.csr_matrix(
        (taken.data, found[taken.indices], taken.indptr),
        shape=(counts.shape[0], len(match.columns)),
    )
