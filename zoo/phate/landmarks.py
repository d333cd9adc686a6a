"""Landmark PHATE for many points (Moon et al., 2019, Methods, "Scalability"; the phate
package's ``graphtools.LandmarkGraph``).

1. `spectral_landmarks` groups the ``n`` points into at most ``n_landmark`` clusters:
   the top ``N_SVD`` eigenvectors ``V`` of the diffusion affinity ``D^-1/2 K D^-1/2`` are
   found by randomized subspace iteration (`zoo.common.subspace`), the points are described
   by ``P V`` (one diffusion step of each eigenvector, ``P = D^-1 K``), and k-means
   (k-means++ start, Lloyd steps) clusters them. This is a discrete choice, made eagerly and never
   differentiated.
2. `landmark_operator`: with ``C`` the ``n x L`` cluster indicator, the landmark-to-point
   transitions ``P_mn = rownorm(C^T K)`` and point-to-landmark transitions
   ``P_nm = rownorm(K C) = D^-1 K C`` give the ``L x L`` diffusion operator
   ``P_mn P_nm = S^-1 (K C)^T D^-1 (K C)`` with ``S = C^T D 1``, row-stochastic.
3. `interpolate` carries landmark coordinates ``Y`` back to every point as ``P_nm Y``.

Steps 2 and 3 are differentiable in the kernel values. ``K C`` is held as a dense
``n x L`` matrix, so memory grows as ``n * n_landmark`` instead of ``n^2``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from zoo.common.subspace import top_eigenpairs
from zoo.phate.alpha_decay import KernelPattern, degrees, sparse_matmul

N_SVD = 100  # eigenvectors describing each point (graphtools' n_svd)
SUBSPACE_ITERATIONS = 7  # as scikit-learn's randomized_svd, which graphtools uses
KMEANS_STEPS = 20  # at most; Lloyd's steps stop when no label changes
ASSIGN_BATCH = 1024


def spectral_landmarks(
    values: Float[Array, " n_entries"],
    pattern: KernelPattern,
    n_landmark: int,
    *,
    key: PRNGKeyArray,
) -> np.ndarray:
    """Cluster labels ``0 .. L - 1`` (``L <= n_landmark``; empty clusters are dropped).

    Args:
        values: the kernel at `pattern`'s entries (`zoo.phate.alpha_decay.kernel_values`).
        pattern: the kernel's sparsity pattern.
        n_landmark: the number of clusters asked for (less than the number of points).
        key: draws the random subspace and the k-means++ seeds.

    Returns:
        An int32 NumPy array with each point's landmark.
    """
    subspace_key, kmeans_key = jax.random.split(key)
    labels = _spectral_labels(
        jax.lax.stop_gradient(values), pattern, n_landmark, subspace_key, kmeans_key
    )
    _, relabelled = np.unique(np.asarray(labels), return_inverse=True)
    return relabelled.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("n_landmark",))
def _spectral_labels(values, pattern, n_landmark, subspace_key, kmeans_key):
    n = pattern.bandwidth_neighbour.shape[0]
    degree = degrees(values, pattern)
    scale = jax.lax.rsqrt(degree)
    affinity = values * scale[pattern.rows] * scale[pattern.cols]
    _, vectors = top_eigenpairs(
        lambda q: sparse_matmul(affinity, pattern, q),
        n,
        min(N_SVD, n),
        iterations=SUBSPACE_ITERATIONS,
        key=subspace_key,
        dtype=values.dtype,
    )
    features = sparse_matmul(values, pattern, vectors) / degree[:, None]
    return kmeans(features, n_landmark, key=kmeans_key)


def kmeans(
    x: Float[Array, "n dim"], k: int, *, key: PRNGKeyArray, steps: int = KMEANS_STEPS
) -> Int[Array, " n"]:
    """Lloyd's k-means from a k-means++ start (Arthur & Vassilvitskii, 2007), until no label
    changes or `steps` updates; returns each point's cluster. A cluster that empties keeps
    its previous centre."""
    n = x.shape[0]
    first_key, seeding_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)

    def seed(i, state):
        chosen, closest = state
        pick = jax.random.categorical(jax.random.fold_in(seeding_key, i), jnp.log(closest + 1e-30))
        closest = jnp.minimum(closest, jnp.sum((x - x[pick]) ** 2, axis=1))
        return chosen.at[i].set(pick), closest

    chosen = jnp.zeros(k, jnp.int32).at[0].set(first)
    closest = jnp.sum((x - x[first]) ** 2, axis=1)
    chosen, _ = jax.lax.fori_loop(1, k, seed, (chosen, closest))

    def unsettled(state):
        step, _, labels, previous = state
        return (step < steps) & jnp.any(labels != previous)

    def lloyd(state):
        step, centres, labels, _ = state
        sums = jax.ops.segment_sum(x, labels, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(n, x.dtype), labels, num_segments=k)
        centres = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)
        return step + 1, centres, _nearest(x, centres), labels

    centres = x[chosen]
    start = (0, centres, _nearest(x, centres), jnp.full(n, -1, jnp.int32))
    return jax.lax.while_loop(unsettled, lloyd, start)[2]


def _nearest(x: Float[Array, "n dim"], centres: Float[Array, "k dim"]) -> Int[Array, " n"]:
    """Index of the closest centre to each point, in batches of points."""
    centre_norms = jnp.sum(centres**2, axis=1)

    def closest(point):
        return jnp.argmin(centre_norms - 2.0 * (centres @ point))

    return jax.lax.map(closest, x, batch_size=ASSIGN_BATCH)


def landmark_operator(
    values: Float[Array, " n_entries"],
    pattern: KernelPattern,
    clusters: Int[Array, " n"],
    n_landmarks: int,
) -> Float[Array, "n_landmarks n_landmarks"]:
    """The row-stochastic landmark diffusion operator ``P_mn P_nm`` (module docstring)."""
    n = pattern.bandwidth_neighbour.shape[0]
    to_clusters = jnp.zeros((n, n_landmarks), values.dtype)
    to_clusters = to_clusters.at[pattern.rows, clusters[pattern.cols]].add(values)  # K C
    scaled = to_clusters * jax.lax.rsqrt(degrees(values, pattern))[:, None]
    through_points = scaled.T @ scaled  # (K C)^T D^-1 (K C)
    return through_points / through_points.sum(axis=1, keepdims=True)


def interpolate(
    values: Float[Array, " n_entries"],
    pattern: KernelPattern,
    clusters: Int[Array, " n"],
    landmark_coordinates: Float[Array, "n_landmarks k"],
) -> Float[Array, "n k"]:
    """Every point's coordinates as the ``P_nm``-weighted mean of the landmarks'."""
    n = pattern.bandwidth_neighbour.shape[0]
    weights = values / degrees(values, pattern)[pattern.rows]
    contributions = weights[:, None] * landmark_coordinates[clusters[pattern.cols]]
    return jax.ops.segment_sum(contributions, pattern.rows, num_segments=n)
