"""Checked input of the VAE's public entry points: the raw count matrix, each cell's batch,
and the per-batch log-library moments that make the latent library's prior.

The checks run eagerly on NumPy / scipy data, before anything is compiled, and each error
names the argument at fault (``counts``, ``batches``, ``batch_key``, ``layer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.common.features import is_anndata

PRIOR_VARIANCE_FLOOR = 1e-4  # keeps the prior proper when a batch's library sizes are equal


def read_counts(data, layer: str | None = None):
    """The raw count matrix of `data` as float32 (scipy sparse stays sparse), checked.

    Args:
        data: an AnnData, or a ``(cells, genes)`` dense or scipy sparse count matrix.
        layer: the AnnData layer holding the counts (default ``adata.X``).

    Raises:
        ValueError: for a missing layer, a non-numeric dtype, a matrix that is not 2-D or
            is empty, NaN/inf, negative or non-integer counts, or a cell with no counts.
    """
    if is_anndata(data):
        if layer is not None and layer not in data.layers:
            raise ValueError(f"layer {layer!r} not in adata.layers {sorted(data.layers)}")
        counts = data.X if layer is None else data.layers[layer]
    else:
        if layer is not None:
            raise ValueError("layer is only meaningful for an AnnData")
        counts = data
    sparse = hasattr(counts, "tocsr")
    dtype = counts.dtype if sparse else np.asarray(counts).dtype
    if dtype.kind not in "biuf":
        raise ValueError(f"counts must be a real numeric matrix, got dtype {dtype}")
    counts = counts.tocsr().astype(np.float32) if sparse else np.asarray(counts, np.float32)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a (cells, genes) matrix, got shape {counts.shape}")
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"counts must have at least one cell and one gene, got {counts.shape}")
    values = counts.data if sparse else counts
    if not np.all(np.isfinite(values)):
        raise ValueError("counts contain NaN or infinite values")
    if np.any(values < 0):
        raise ValueError("counts contain negative values; the VAE models raw counts")
    if np.any(values != np.round(values)):
        raise ValueError(
            "counts contain non-integer values; the VAE models raw counts, not normalized data"
        )
    empty = np.flatnonzero(np.asarray(counts.sum(axis=1)).ravel() == 0)
    if empty.size:
        raise ValueError(
            f"counts: {empty.size} cell(s) have no counts (first: row {empty[0]}); drop them"
        )
    return counts


def read_batches(
    data, batch_key: str | Sequence | np.ndarray | None, labels: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], np.ndarray]:
    """The batch labels and each cell's batch index.

    Args:
        data: an AnnData or a count matrix (for the number of cells).
        batch_key: an ``adata.obs`` column name, the labels themselves (one per cell), or
            None (one batch).
        labels: the model's batch labels; None to take the sorted distinct labels of `data`.

    Raises:
        ValueError: for an unknown obs column, a wrong number of labels, labels the model
            does not know, or a mismatch between the model's batches and `batch_key`.
    """
    n_cells = data.shape[0]
    if batch_key is None:
        if labels:
            raise ValueError(f"the model has batches {labels}; pass batch_key")
        return (), np.zeros(n_cells, np.int32)
    if isinstance(batch_key, str):
        if not is_anndata(data):
            raise ValueError("a batch_key column name needs an AnnData; pass the labels instead")
        if batch_key not in data.obs:
            raise ValueError(
                f"batch key {batch_key!r} not in adata.obs; columns are {list(data.obs.columns)}"
            )
        cell_labels = data.obs[batch_key]
    else:
        cell_labels = batch_key
    cell_labels = np.asarray(cell_labels).astype(str)
    if cell_labels.shape != (n_cells,):
        raise ValueError(f"expected {n_cells} batch labels, got shape {cell_labels.shape}")
    if labels is None:
        labels = tuple(sorted(set(cell_labels.tolist())))
    elif not labels:
        raise ValueError("the model was trained without batches; pass batch_key=None")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(cell_labels.tolist()) - set(index))
    if unknown:
        raise ValueError(f"batch labels {unknown} are not among the model's {list(labels)}")
    return labels, np.array([index[label] for label in cell_labels], np.int32)


def check_batch_indices(batches, n_cells: int, n_batches: int) -> np.ndarray:
    """`batches` as int32 after checking it holds one index in ``[0, n_batches)`` per cell.

    Raises:
        ValueError: naming `batches` for a wrong shape, non-integer values or an index out
            of range.
    """
    batches = np.asarray(batches)
    if batches.shape != (n_cells,):
        raise ValueError(f"batches must have shape ({n_cells},), got {batches.shape}")
    if batches.dtype.kind not in "iu" and not (
        batches.dtype.kind == "f" and np.all(batches == np.round(batches))
    ):
        raise ValueError(f"batches must be integer batch indices, got dtype {batches.dtype}")
    outside = (batches < 0) | (batches >= n_batches)
    if np.any(outside):
        raise ValueError(
            f"batches must lie in [0, {n_batches}) (the model's batches), got {batches[outside][0]}"
        )
    return batches.astype(np.int32)


def library_moments(counts, batches: np.ndarray, n_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (``ddof=0``) of ``log(total counts)`` over the cells of each batch:
    scvi-tools' empirical library prior (``scvi.model._utils._init_library_size``).

    Unlike scvi-tools, which leaves ``N(0, 1)`` for a batch without cells, such a batch gets
    the moments of all cells, and a variance is at least ``PRIOR_VARIANCE_FLOOR`` (a batch
    of one cell, or of equal library sizes, would otherwise have a zero-width prior).

    Returns:
        ``(n_batches,)`` float32 means and variances.
    """
    log_library = np.log(np.asarray(counts.sum(axis=1), np.float64).ravel())
    means = np.full(n_batches, log_library.mean())
    variances = np.full(n_batches, log_library.var())
    for b in np.unique(batches):
        means[b] = log_library[batches == b].mean()
        variances[b] = log_library[batches == b].var()
    return means.astype(np.float32), np.maximum(variances, PRIOR_VARIANCE_FLOOR).astype(np.float32)
