"""UMAP's fuzzy neighbour graph and its low-dimensional curve (McInnes, Healy & Melville,
2018, "UMAP: Uniform Manifold Approximation and Projection", arXiv:1802.03426, section 3).

From the ``k`` nearest neighbours of each point ``i`` (self first, at distance 0):

1. ``rho_i`` is the distance to the nearest *other* point at nonzero distance (more
   generally the ``local_connectivity``-th, interpolated), so every point is fully connected
   to at least one neighbour;
2. ``sigma_i`` solves ``sum_{j=1}^{k-1} exp(-max(0, d_ij - rho_i) / sigma_i) = log2(k)`` by
   bisection, then is floored at ``1e-3`` times the mean neighbour distance (of the row if
   ``rho_i > 0``, else of all rows);
3. the directed memberships are ``v_ij = exp(-max(0, d_ij - rho_i) / sigma_i)``, with 0 for
   ``j = i``;
4. the graph is symmetrised by the fuzzy union ``w = v + v^T - v * v^T`` (a mix with the
   fuzzy intersection ``v * v^T`` when ``set_op_mix_ratio < 1``).

Steps 1-3 follow umap-learn's ``smooth_knn_dist`` and ``compute_membership_strengths``
(tolerance ``1e-5``, at most 64 halvings) so sigma and rho agree with it on the same
neighbours. The embedding similarity is ``q(d) = 1 / (1 + a d^(2b))``, with ``a, b`` fitted
by least squares to ``1`` for ``d < min_dist`` and ``exp(-(d - min_dist) / spread)`` beyond,
on 300 points of ``[0, 3 spread]``, as umap-learn's ``find_ab_params`` does.

Where each step runs: steps 1-3 are per-row arithmetic on the ``n x k`` neighbour table and
stay in JAX, jit-compiled: the bisection is one vectorised ``while_loop`` over all rows, and
`membership_strengths` is differentiable with respect to the distances for fixed ``sigma``
and ``rho``. Step 4 changes the
sparsity structure (it adds the mirror of every edge), which JAX cannot express with fixed
shapes and which has no gradient to keep, so it is done with `scipy.sparse` matrices, as in
umap-learn.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jaxtyping import Array, Float, Int

BISECTION_TOLERANCE = 1e-5
BISECTION_STEPS = 64
MIN_SIGMA_SCALE = 1e-3
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class UMAPGraph(NamedTuple):
    """The symmetric fuzzy graph as directed edges ``heads[e] -> tails[e]`` (both directions
    of every pair present) with membership ``weights[e]`` in (0, 1]."""

    heads: Int[np.ndarray, " n_edges"]
    tails: Int[np.ndarray, " n_edges"]
    weights: Float[np.ndarray, " n_edges"]
    n_points: int


def smooth_knn_dist(
    distances: Float[Array, "n k"] | np.ndarray,
    n_neighbors: float,
    *,
    local_connectivity: float = 1.0,
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """Per-point bandwidth ``sigma`` and offset ``rho`` (steps 1 and 2 of the module docstring).

    Args:
        distances: sorted neighbour distances, column 0 being the point itself (distance 0).
        n_neighbors: ``k`` in the target ``log2(k)`` (umap-learn passes the column count).
        local_connectivity: how many nearest neighbours are fully connected (may be
            fractional: the distance is interpolated between neighbours).

    Returns:
        ``(sigma, rho)``, each of shape ``(n,)``.
    """
    distances = jnp.asarray(distances, dtype=jnp.float32)
    return _smooth_knn_dist(distances, float(n_neighbors), float(local_connectivity))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _smooth_knn_dist(
    distances: Float[Array, "n k"], n_neighbors: float, local_connectivity: float
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    rho = jax.vmap(_rho, in_axes=(0, None))(distances, local_connectivity)
    target = np.log2(n_neighbors)
    sigma = jax.vmap(_bisect_sigma, in_axes=(0, 0, None))(distances[:, 1:], rho, target)
    row_floor = MIN_SIGMA_SCALE * jnp.mean(distances, axis=1)
    global_floor = MIN_SIGMA_SCALE * jnp.mean(distances)
    sigma = jnp.maximum(sigma, jnp.where(rho > 0.0, row_floor, global_floor))
    return sigma, rho


def _rho(row: Float[Array, " k"], local_connectivity: float) -> Float[Array, ""]:
    """The ``local_connectivity``-th smallest nonzero distance of the row (interpolated); the
    largest nonzero distance if there are too few, 0 if there are none."""
    positive = row > 0.0
    n_positive = jnp.sum(positive)
    nonzero = jnp.sort(jnp.where(positive, row, jnp.inf))  # the positive distances first
    index = int(np.floor(local_connectivity))
    fraction = local_connectivity - index
    if index > 0:
        value = nonzero[index - 1]
        if fraction > BISECTION_TOLERANCE:
            value = value + fraction * (nonzero[index] - nonzero[index - 1])
    else:
        value = fraction * nonzero[0]
    largest = jnp.max(jnp.where(positive, row, 0.0))
    return jnp.where(n_positive >= local_connectivity, value, largest)


def _bisect_sigma(
    others: Float[Array, " k1"], rho: Float[Array, ""], target: float
) -> Float[Array, ""]:
    """Bisection on ``sigma`` for ``sum exp(-max(0, d - rho) / sigma) = target``: double
    ``sigma`` until it overshoots, then halve the bracket, stopping within tolerance."""

    def total(sigma):
        excess = others - rho
        return jnp.sum(jnp.where(excess > 0.0, jnp.exp(-excess / sigma), 1.0))

    def searching(state):
        step, _, _, sigma = state
        return (step < BISECTION_STEPS) & (jnp.abs(total(sigma) - target) >= BISECTION_TOLERANCE)

    def bisect(state):
        step, lo, hi, sigma = state
        too_wide = total(sigma) > target
        new_hi = jnp.where(too_wide, sigma, hi)
        new_lo = jnp.where(too_wide, lo, sigma)
        unbounded = new_hi >= _FLOAT32_MAX
        new_sigma = jnp.where(unbounded, sigma * 2.0, (new_lo + new_hi) / 2.0)
        return step + 1, new_lo, new_hi, new_sigma

    init = (0, jnp.float32(0.0), jnp.float32(_FLOAT32_MAX), jnp.float32(1.0))
    return jax.lax.while_loop(searching, bisect, init)[-1]


@jax.jit
def membership_strengths(
    indices: Int[Array, "n k"] | np.ndarray,
    distances: Float[Array, "n k"] | np.ndarray,
    sigma: Float[Array, " n"],
    rho: Float[Array, " n"],
) -> Float[Array, "n k"]:
    """Directed memberships ``v_ij`` (step 3), 0 where the neighbour is the point itself."""
    indices = jnp.asarray(indices)
    distances = jnp.asarray(distances, dtype=jnp.float32)
    excess = distances - rho[:, None]
    safe_sigma = jnp.where(sigma > 0.0, sigma, 1.0)[:, None]
    value = jnp.where((excess <= 0.0) | (sigma[:, None] == 0.0), 1.0, jnp.exp(-excess / safe_sigma))
    is_self = indices == jnp.arange(indices.shape[0])[:, None]
    return jnp.where(is_self, 0.0, value)


def fuzzy_union(
    indices: Int[np.ndarray, "n k"],
    memberships: Float[np.ndarray, "n k"],
    *,
    set_op_mix_ratio: float = 1.0,
) -> UMAPGraph:
    """Symmetrise directed memberships (step 4) into a `UMAPGraph`, dropping zero weights.

    ``V`` is the sparse matrix with ``V[i, indices[i, c]] = memberships[i, c]``; the result is
    ``mix * (V + V^T - V o V^T) + (1 - mix) * (V o V^T)`` (``o`` elementwise), computed in
    float64 with `scipy.sparse`, as umap-learn's ``fuzzy_simplicial_set`` does. Edges are
    sorted by head, then tail; memory is linear in the number of edges.
    """
    indices = np.asarray(indices, dtype=np.int64)
    memberships = np.asarray(memberships, dtype=np.float64)
    n, k = indices.shape
    heads = np.repeat(np.arange(n, dtype=np.int64), k)
    directed = scipy.sparse.csr_matrix(
        (memberships.ravel(), (heads, indices.ravel())), shape=(n, n)
    )
    transpose = directed.transpose().tocsr()
    intersection = directed.multiply(transpose).tocsr()
    union = directed + transpose - intersection
    weights = set_op_mix_ratio * union + (1.0 - set_op_mix_ratio) * intersection
    weights = scipy.sparse.csr_matrix(weights)
    weights.eliminate_zeros()
    weights.sort_indices()
    edges = weights.tocoo()
    return UMAPGraph(
        heads=edges.row.astype(np.int32),
        tails=edges.col.astype(np.int32),
        weights=edges.data.astype(np.float32),
        n_points=n,
    )


def fuzzy_graph(
    indices: Int[Array, "n k"] | np.ndarray,
    distances: Float[Array, "n k"] | np.ndarray,
    *,
    local_connectivity: float = 1.0,
    set_op_mix_ratio: float = 1.0,
) -> UMAPGraph:
    """UMAP's symmetric fuzzy graph from a kNN that includes each point first (steps 1-4)."""
    sigma, rho = smooth_knn_dist(
        distances, float(indices.shape[1]), local_connectivity=local_connectivity
    )
    memberships = membership_strengths(indices, distances, sigma, rho)
    return fuzzy_union(
        np.asarray(indices), np.asarray(memberships), set_op_mix_ratio=set_op_mix_ratio
    )


@functools.lru_cache(maxsize=64)
def curve_parameters(min_dist: float, spread: float) -> tuple[float, float]:
    """``(a, b)`` of ``q(d) = 1 / (1 + a d^(2b))`` fitted to the offset exponential decay
    (module docstring). Needs scipy, only here."""
    from scipy.optimize import curve_fit

    d = np.linspace(0.0, 3.0 * spread, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2.0 * b)), d, target)
    return float(a), float(b)
