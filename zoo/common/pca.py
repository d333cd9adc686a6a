"""Principal component scores by randomized subspace iteration (`zoo.common.subspace`).

The columns of ``x`` are centred (``X``) and the leading eigenpairs ``(s_k^2, u_k)`` of
``X X^T`` are found from products with ``X`` and ``X^T`` only; the scores are ``u_k s_k``,
what scikit-learn's ``PCA(svd_solver="randomized").fit_transform`` returns up to each
column's sign. Seven refinements, as scikit-learn uses for few components, the last two
differentiated: the gradient is that of the exact leading principal subspace to within
``(s_{k + 10} / s_k) ** 4`` (`zoo.common.subspace`), close where the spectrum decays and only
approximate where it is flat.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from zoo.common.subspace import DIFFERENTIABLE_STEPS, top_eigenpairs

ITERATIONS = 7


def pca_scores(
    x: Float[Array, "n_samples n_features"], n_components: int
) -> Float[Array, "n_samples n_components"]:
    """The top `n_components` principal component scores of the rows of `x`.

    Raises:
        ValueError: unless ``1 <= n_components <= min(n_samples, n_features)``.
    """
    n_samples, n_features = x.shape
    if not 1 <= n_components <= min(n_samples, n_features):
        raise ValueError(
            f"n_components={n_components} must be between 1 and min(n_samples, n_features)"
            f" = {min(n_samples, n_features)}"
        )
    centred = x - x.mean(axis=0)
    variances, vectors = top_eigenpairs(
        lambda q: centred @ (centred.T @ q),
        n_samples,
        n_components,
        iterations=ITERATIONS - DIFFERENTIABLE_STEPS,
        dtype=x.dtype,
    )
    return vectors * jnp.sqrt(jnp.maximum(variances, 0.0))
