"""PHATE's alpha-decay affinity kernel (Moon et al., 2019, Nature Biotechnology 37:1482),
built as graphtools' ``kNNGraph(decay=alpha, thresh=1e-4)`` builds it.

With ``sigma_i`` the distance from point ``i`` to its ``knn``-th nearest other point,

    a(i -> j) = exp(-(|x_i - x_j| / sigma_i) ** alpha),  set to 0 where it is below
                ``threshold``,
    K = (A + A^T) / 2,

so ``K`` is symmetric with ones on its diagonal, and non-zero only between points closer
than ``radius_i = sigma_i * (-log threshold) ** (1 / alpha)`` in one direction or the other.

The kernel is built in two parts:

- `kernel_pattern` (eager, not differentiable) decides which pairs may be non-zero: every
  point within ``radius_i`` of ``i``, found by exact k-nearest-neighbour search that widens
  until the radius is covered, and the mirror of each such pair. It is stored per row,
  kept as a list of (row, column) entries (COO sparse format), so memory is linear in
  the number of non-zeros.
- `kernel_values` computes ``K`` on that pattern from the points with JAX, so it is
  differentiable with respect to the points (the neighbour defining ``sigma_i`` is part of
  the pattern; its distance is recomputed).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from zoo.common.knn import knn as nearest_neighbours
from zoo.common.knn import knn_query

SEARCH_MULTIPLIER = 6  # first search width, in units of knn + 1 (graphtools' default)


class KernelPattern(NamedTuple):
    """The entries ``(rows[e], cols[e])`` where the symmetric kernel may be non-zero (each
    pair once, both orders present, the diagonal included), and, for each point, its
    ``knn``-th nearest other point, whose distance is ``sigma_i``."""

    rows: Int[Array, " n_entries"]
    cols: Int[Array, " n_entries"]
    bandwidth_neighbour: Int[Array, " n"]


def decay_radius(decay: float, threshold: float) -> float:
    """The distance, in units of ``sigma_i``, at which ``a(i -> j)`` falls to `threshold`."""
    return (-math.log(threshold)) ** (1.0 / decay)


def kernel_pattern(
    points: Float[Array, "n dim"], knn: int, decay: float, threshold: float
) -> KernelPattern:
    """Find every pair of points whose alpha-decay affinity reaches `threshold` one way.

    Args:
        points: one row per point (finite values).
        knn: the neighbour whose distance is the bandwidth ``sigma_i`` (self not counted);
            ``1 <= knn < n``.
        decay: the exponent ``alpha``.
        threshold: affinities below it are zero.

    Returns:
        The symmetric sparsity pattern of ``K`` (see `KernelPattern`).
    """
    n = points.shape[0]
    width = min(SEARCH_MULTIPLIER * (knn + 1), n)
    distances, indices = (
        np.asarray(a) for a in nearest_neighbours(points, width, include_self=True, method="exact")
    )
    bandwidth = np.maximum(distances[:, knn], np.finfo(np.float32).eps)
    radius = bandwidth * decay_radius(decay, threshold)
    searches = [(np.arange(n), distances, indices)]
    short = np.flatnonzero(distances[:, -1] < radius) if width < n else np.zeros(0, int)
    while short.size:  # widen the search for points whose radius reaches past it
        width = min(2 * width, n)
        more = tuple(np.asarray(a) for a in knn_query(points[short], points, width))
        searches.append((short, *more))
        short = short[(more[0][:, -1] < radius[short]) & (width < n)]
    codes = []
    for rows, found_distances, found_indices in searches:
        r, c = np.nonzero(found_distances <= radius[rows, None])
        codes.append(rows[r].astype(np.int64) * n + found_indices[r, c])
    codes = np.concatenate(codes)
    rows, cols = np.divmod(np.unique(np.concatenate([codes, (codes % n) * n + codes // n])), n)
    return KernelPattern(
        rows=jnp.asarray(rows.astype(np.int32)),
        cols=jnp.asarray(cols.astype(np.int32)),
        bandwidth_neighbour=jnp.asarray(indices[:, knn].astype(np.int32)),
    )


def _norm(difference: Float[Array, "... dim"]) -> Float[Array, "..."]:
    """Euclidean norm with a zero (not NaN) gradient at zero."""
    squared = jnp.sum(difference**2, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def kernel_values(
    points: Float[Array, "n dim"], pattern: KernelPattern, decay: float, threshold: float
) -> Float[Array, " n_entries"]:
    """The symmetric alpha-decay kernel ``K`` at the entries of `pattern`.

    Differentiable with respect to `points`. Ratios ``d / sigma`` are capped just past the
    threshold radius before the power, so far pairs give exact zeros and finite gradients.
    """
    bandwidth = _norm(points - points[pattern.bandwidth_neighbour])
    bandwidth = jnp.maximum(bandwidth, jnp.finfo(points.dtype).eps)
    distance = _norm(points[pattern.rows] - points[pattern.cols])
    cap = 1.01 * decay_radius(decay, threshold)

    def affinity(scale: Float[Array, " n_entries"]) -> Float[Array, " n_entries"]:
        value = jnp.exp(-(jnp.minimum(distance / scale, cap) ** decay))
        return jnp.where(value >= threshold, value, 0.0)

    return (affinity(bandwidth[pattern.rows]) + affinity(bandwidth[pattern.cols])) / 2


def degrees(values: Float[Array, " n_entries"], pattern: KernelPattern) -> Float[Array, " n"]:
    """Row sums of ``K``."""
    n = pattern.bandwidth_neighbour.shape[0]
    return jax.ops.segment_sum(values, pattern.rows, num_segments=n)


def dense_kernel(values: Float[Array, " n_entries"], pattern: KernelPattern) -> Float[Array, "n n"]:
    """``K`` as a dense matrix (for small ``n``)."""
    n = pattern.bandwidth_neighbour.shape[0]
    return jnp.zeros((n, n), values.dtype).at[pattern.rows, pattern.cols].add(values)


def sparse_matmul(
    values: Float[Array, " n_entries"], pattern: KernelPattern, right: Float[Array, "n k"]
) -> Float[Array, "n k"]:
    """``K @ right`` without forming ``K``."""
    n = pattern.bandwidth_neighbour.shape[0]
    products = values[:, None] * right[pattern.cols]
    return jax.ops.segment_sum(products, pattern.rows, num_segments=n)
