"""Cook's distances and DESeq2's count-outlier flag (Love, Huber & Anders, 2014, "Cook's
distance").

For sample ``j`` of a gene with fitted mean ``mu_j``, leverage ``h_j`` and ``p``
coefficients,

    D_j = (y_j - mu_j)^2 / (mu_j + alpha_r mu_j^2) / p * h_j / (1 - h_j)^2,

where ``alpha_r`` is a robust moments dispersion: ``(v - m) / m^2``, at least ``0.04``, with
``m`` the mean normalised count and ``v`` a trimmed variance (pooled by taking the largest
over the design's cells with at least three replicates; over all samples if there is none).
A gene is an outlier when some sample of a cell with at least three replicates has
``D_j`` above the 99% quantile of ``F(p, n - p)``, unless at least three samples have more
counts than the sample of largest ``D_j``; its p-value is then set aside. After the outlier
counts of a gene were replaced and the gene refit (`zoo.deseq2.outlier_replacement`), the
distances of the replaceable samples no longer count, as in DESeq2 (the distances are not
recomputed).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Array, Bool, Float

MIN_ROBUST_DISPERSION = 0.04


def replicate_cells(design: np.ndarray) -> tuple[int, ...]:
    """For each sample, the index of its cell: the group of samples with its design row."""
    _, cells = np.unique(np.asarray(design), axis=0, return_inverse=True)
    return tuple(int(cell) for cell in np.ravel(cells))


def cell_sizes(cells: tuple[int, ...]) -> np.ndarray:
    """For each sample, how many samples share its cell."""
    cells_array = np.asarray(cells)
    return np.bincount(cells_array)[cells_array]


def _trimmed_mean(x: Float[Array, "samples genes"], trim: float) -> Float[Array, " genes"]:
    n = x.shape[0]
    cut = math.floor(n * trim)
    return jnp.sort(x, axis=0)[cut : n - cut].mean(axis=0)


def _cell_trim(n: int) -> tuple[float, float]:
    """DESeq2's trim fraction and variance scale for a cell of `n` samples."""
    if n >= 23.5:
        return 1 / 8, 1.51
    if n >= 3.5:
        return 1 / 4, 1.86
    return 1 / 3, 2.04


def robust_dispersions(
    normed: Float[Array, "samples genes"], cells: tuple[int, ...]
) -> Float[Array, " genes"]:
    """``alpha_r`` of the module docstring."""
    sizes = cell_sizes(cells)
    variances = []
    for cell in sorted({c for c, size in zip(cells, sizes, strict=True) if size >= 3}):
        rows = np.flatnonzero(np.asarray(cells) == cell)
        trim, scale = _cell_trim(len(rows))
        group = normed[rows]
        squared = (group - _trimmed_mean(group, trim)) ** 2
        variances.append(scale * _trimmed_mean(squared, trim))
    if variances:
        variance = jnp.max(jnp.stack(variances), axis=0)
    else:
        squared = (normed - _trimmed_mean(normed, 0.125)) ** 2
        variance = 1.51 * _trimmed_mean(squared, 0.125)
    mean = normed.mean(axis=0)
    safe = jnp.where(mean > 0, mean, 1.0)
    return jnp.maximum((variance - mean) / safe**2, MIN_ROBUST_DISPERSION)


def cooks_distances(
    counts: Float[Array, "samples genes"],
    means: Float[Array, "samples genes"],
    hat_diagonals: Float[Array, "samples genes"],
    robust_dispersion: Float[Array, " genes"],
    n_coefficients: int,
) -> Float[Array, "samples genes"]:
    """``D_j`` for every sample and gene."""
    variance = means + robust_dispersion * means**2
    leverage = hat_diagonals / (1.0 - hat_diagonals) ** 2
    return (counts - means) ** 2 / variance / n_coefficients * leverage


def cooks_cutoff(n_samples: int, n_coefficients: int) -> float:
    """The 99% quantile of ``F(p, n - p)``, above which a distance marks an outlier."""
    return float(scipy.stats.f.ppf(0.99, n_coefficients, n_samples - n_coefficients))


def cooks_outliers(
    counts: Float[Array, "samples genes"],
    distances: Float[Array, "samples genes"],
    cells: tuple[int, ...],
    cutoff: float,
    cleared: Bool[Array, "samples genes"] | None = None,
) -> Bool[Array, " genes"]:
    """The genes flagged as count outliers (module docstring); `cleared` distances (those
    of replaced counts) do not flag, though the largest distance still picks the sample the
    count rule looks at."""
    eligible = jnp.asarray(cell_sizes(cells) >= 3)[:, None]
    if cleared is not None:
        eligible = eligible & ~cleared
    flagged = jnp.any(eligible & (distances > cutoff), axis=0)
    worst = jnp.argmax(distances, axis=0)
    worst_count = jnp.take_along_axis(counts, worst[None, :], axis=0)
    return flagged & ((counts > worst_count).sum(axis=0) < 3)


@functools.partial(jax.jit, static_argnames=("n_coefficients", "cells"))
def outlier_distances(
    counts: Float[Array, "samples genes"],
    normed: Float[Array, "samples genes"],
    means: Float[Array, "samples genes"],
    hat_diagonals: Float[Array, "samples genes"],
    n_coefficients: int,
    *,
    cells: tuple[int, ...],
) -> Float[Array, "samples genes"]:
    """Cook's distances of a fit at the robust dispersions, without gradients."""
    counts, normed, means, hat_diagonals = jax.lax.stop_gradient(
        (counts, normed, means, hat_diagonals)
    )
    dispersion = robust_dispersions(normed, cells)
    return cooks_distances(counts, means, hat_diagonals, dispersion, n_coefficients)
