"""Multidimensional scaling of a distance matrix, differentiable with respect to it.

- `classical_mds`: Torgerson's classical scaling. With ``J`` the centring matrix,
  ``B = -J D^2 J / 2`` and its top eigenpairs ``(lambda_k, v_k)`` (by randomized subspace
  iteration, `zoo.common.subspace`), the coordinates are ``v_k * sqrt(max(lambda_k, 0))``
  (Torgerson, 1952, Psychometrika 17:401).
- `smacof`: metric MDS by SMACOF (de Leeuw, 1977; Borg & Groenen, "Modern Multidimensional
  Scaling", 2005, ch. 8): the Guttman transform ``X <- B(X) X / n`` with
  ``B(X)_ij = -D_ij / d_ij(X)`` off the diagonal and rows summing to zero, which never
  increases the raw stress ``sum_{i<j} (d_ij(X) - D_ij)^2``. A fixed number of steps is run
  so that the result can be differentiated (each step is rematerialised in the backward
  pass, so memory stays ``O(n^2)``, not ``O(steps * n^2)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from zoo.common.subspace import top_eigenpairs

CLASSICAL_ITERATIONS = 20


def pairwise_distances(x: Float[Array, "n dim"]) -> Float[Array, "n n"]:
    """Euclidean distances between the rows of `x`, with zero (not NaN) gradients where
    two rows coincide. Columns are centred first, which keeps ``|a|^2 + |b|^2 - 2 a.b``
    accurate."""
    x = x - x.mean(axis=0)
    norms = jnp.sum(x**2, axis=1)
    squared = jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * (x @ x.T), 0.0)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def classical_mds(distances: Float[Array, "n n"], n_components: int) -> Float[Array, "n k"]:
    """Classical (Torgerson) scaling of a symmetric distance matrix into `n_components`
    dimensions; each axis's sign is fixed so its largest-magnitude coordinate is positive."""
    squared = distances**2
    centred = squared - squared.mean(axis=0) - squared.mean(axis=1)[:, None] + squared.mean()
    eigenvalues, eigenvectors = top_eigenpairs(
        lambda q: -0.5 * (centred @ q),
        distances.shape[0],
        n_components,
        iterations=CLASSICAL_ITERATIONS,
        dtype=distances.dtype,
    )
    return eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))


def smacof(
    distances: Float[Array, "n n"], init: Float[Array, "n k"], n_steps: int
) -> Float[Array, "n k"]:
    """`n_steps` Guttman transforms from `init` towards minimal stress for `distances`."""
    n = distances.shape[0]

    @jax.checkpoint
    def guttman(x: Float[Array, "n k"], _) -> tuple[Float[Array, "n k"], None]:
        current = pairwise_distances(x)
        ratio = jnp.where(current > 0, distances / jnp.where(current > 0, current, 1.0), 0.0)
        return (ratio.sum(axis=1)[:, None] * x - ratio @ x) / n, None

    result, _ = jax.lax.scan(guttman, init, None, length=n_steps)
    return result


def stress(distances: Float[Array, "n n"], x: Float[Array, "n k"]) -> Float[Array, ""]:
    """Raw stress ``sum_{i<j} (d_ij(x) - D_ij)^2``."""
    return jnp.sum(jnp.triu(pairwise_distances(x) - distances, k=1) ** 2)
