"""Reading a user's cells: an ``.h5ad`` file (or an AnnData) of raw counts, in batches.

The counts are in ``X`` or in a named layer; labels, when wanted, in an ``obs`` column. A
file is opened backed (``X`` stays on disk and is read a batch of cells at a time; a layer
is loaded whole, as anndata does). Rows are cells numbered from 1; every error names the
file and the cell, gene or column, as `finetuning.user_data.UserDataError`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import anndata
import numpy as np
import scipy.sparse as sp

from finetuning.user_data import UserDataError
from zoo.expression.foundation_model import DifferentiableFoundationModel
from zoo.expression.gene_vocabulary import (
    MIN_FRACTION,
    GeneMatch,
    GeneMatchError,
    GeneVocabulary,
)


def read_cells(path: str | os.PathLike) -> anndata.AnnData:
    """Open an ``.h5ad`` file backed (read-only).

    Raises:
        UserDataError: the file is missing, unreadable or holds no cells.
    """
    path = Path(path)
    if not path.is_file():
        raise UserDataError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # anndata's notice about old file layouts
            warnings.simplefilter("ignore", FutureWarning)
            adata = anndata.read_h5ad(path, backed="r")
    except (OSError, KeyError, ValueError) as error:
        raise UserDataError(f"{path}: not a readable .h5ad file: {error}") from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise UserDataError(
            f"{path}: the file is empty ({adata.n_obs} cells x {adata.n_vars} genes)"
        )
    return adata


def cell_counts_for(
    model: DifferentiableFoundationModel,
    adata: anndata.AnnData,
    layer: str | None,
    source: str = "the AnnData",
    *,
    genes: GeneVocabulary | None = None,
    min_gene_fraction: float = MIN_FRACTION,
):
    """The cells x genes counts of `adata` that `model` reads, in the model's gene order.

    With the model's gene vocabulary (`genes`), the file's genes are lined up with
    it by ID or symbol (`zoo.expression.gene_vocabulary.GeneVocabulary.match`), a report of
    the match is printed to standard error, and missing genes read as zeros. Without one,
    the file must hold exactly the model's genes, in its order.

    Args:
        model: the foundation model (its tokenizer's gene count and medians are used).
        adata: the cells.
        layer: the layer holding raw counts (None: ``X``).
        source: the file name used in errors.
        genes: the model's gene vocabulary (``genes.tsv``), if it has one.
        min_gene_fraction: the least fraction of `genes` the file must hold.

    Returns:
        A row-sliceable matrix of shape ``(n_cells, n_genes)``: the file's own (dense, sparse
        or backed) when it holds exactly the model's genes, else a `MatchedCounts`.

    Raises:
        UserDataError: the layer is missing, gene names repeat, too few genes match, or the
            gene count differs from the model's.
    """
    if layer is not None and layer not in adata.layers:
        layers = ", ".join(adata.layers) or "none"
        raise UserDataError(f"{source}: no layer {layer!r}; the layers are: {layers}")
    counts = adata.X if layer is None else adata.layers[layer]
    n_genes = model.config.tokenizer.n_genes
    if genes is not None:
        medians = np.asarray(model.tokenizer.gene_medians)
        try:
            match = genes.match(adata.var, min_fraction=min_gene_fraction, expression=medians)
        except GeneMatchError as error:
            raise UserDataError(f"{source}: {error}") from None
        if match.missing:  # worth a word; a full match is the quiet case
            print(f"{source}: {match.report()}", file=sys.stderr)
        if match.n_matched == n_genes and np.array_equal(match.columns, np.arange(n_genes)):
            return counts
        return MatchedCounts(counts, match)
    duplicated = adata.var_names[adata.var_names.duplicated()]
    if len(duplicated):
        raise UserDataError(f"{source}: gene {duplicated[0]!r} appears more than once in var_names")
    if adata.n_vars != n_genes:
        raise UserDataError(
            f"{source}: the file has {adata.n_vars} genes but the model reads {n_genes} and "
            "carries no gene list (genes.tsv) to match them by name; give the cells exactly "
            "the model's genes, in its order"
        )
    return counts


class MatchedCounts:
    """A user's count matrix seen through a `GeneMatch`: slicing rows gives those cells'
    counts over the model's genes (dense float32, zeros for missing genes), reading only the
    matched columns of those rows."""

    def __init__(self, counts, match: GeneMatch):
        self.counts, self.match = counts, match

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.match.counts(self.counts[rows])


def checked_counts(block, first_cell: int, cell_names, source: str, what: str) -> np.ndarray:
    """A block of cells' counts as dense float32, after checking them.

    Args:
        block: the counts of cells ``first_cell, first_cell + 1, ...`` (0-based).
        first_cell: the index of the block's first cell.
        cell_names: the names of all cells (``obs_names``).
        source: the file name used in errors.
        what: where the counts are (``"X"`` or ``"layer 'counts'"``).

    Raises:
        UserDataError: naming the cell (row from 1 and name) with a non-finite, negative or
            non-integer count, or no counts at all.
    """
    dense = block.toarray() if sp.issparse(block) else np.asarray(block)
    dense = dense.astype(np.float64)
    problems = (
        (~np.isfinite(dense), "a non-finite count"),
        (dense < 0, "a negative count"),
        (dense != np.round(dense), "a non-integer count (raw counts are needed, not normalised)"),
    )
    for bad, problem in problems:
        cells, genes = np.nonzero(bad)
        if cells.size:
            cell, gene = first_cell + int(cells[0]), int(genes[0])
            raise UserDataError(
                f"{source}: {what} row {cell + 1} (cell {cell_names[cell]!r}), column {gene + 1}: "
                f"{problem}, {dense[cells[0], gene]:g}"
            )
    empty = np.flatnonzero(dense.sum(axis=1) == 0)
    if empty.size:
        cell = first_cell + int(empty[0])
        raise UserDataError(
            f"{source}: {what} row {cell + 1} (cell {cell_names[cell]!r}) has no counts at all"
        )
    return dense.astype(np.float32)


def count_batches(
    model: DifferentiableFoundationModel,
    adata: anndata.AnnData,
    layer: str | None,
    source: str,
    batch_size: int = 256,
    **matching,
) -> Iterator[np.ndarray]:
    """The checked counts (`checked_counts`) of `adata`'s cells over the model's genes
    (`cell_counts_for`, which takes the `matching` keywords), `batch_size` at a time."""
    counts = cell_counts_for(model, adata, layer, source, **matching)
    what = "X" if layer is None else f"layer {layer!r}"
    names = adata.obs_names
    for start in range(0, adata.n_obs, batch_size):
        block = counts[start : start + batch_size]
        yield checked_counts(block, start, names, source, what)


def obs_column(adata: anndata.AnnData, key: str, source: str) -> np.ndarray:
    """The values of ``obs[key]`` as an object array.

    Raises:
        UserDataError: naming the missing column and the columns there are.
    """
    if key not in adata.obs.columns:
        columns = ", ".join(adata.obs.columns) or "none"
        raise UserDataError(f"{source}: no obs column {key!r}; the obs columns are: {columns}")
    return adata.obs[key].to_numpy(dtype=object)
