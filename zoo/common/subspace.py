"""Leading eigenpairs of a symmetric operator by randomized subspace iteration (Halko,
Martinsson & Tropp, 2011, SIAM Review 53:217, Algorithms 4.4 and 5.3).

A random ``n x (k + OVERSAMPLING)`` block is multiplied by the operator and
re-orthonormalised ``iterations + 1`` times; the operator restricted to the resulting
subspace is then diagonalised exactly (Rayleigh-Ritz). Only products with the operator are
needed, so it may be dense, sparse or implicit.

Gradients: the iterations that find the subspace are not differentiated; the last
``DIFFERENTIABLE_STEPS`` steps and the Rayleigh-Ritz step are. Each differentiated step
recovers the part of an eigenvector's derivative that leaves the subspace up to a factor
``lambda_j / lambda_i`` (an unwanted eigenvalue over a wanted one), so with oversampling the
gradient is that of the exact eigenpairs to within
``(lambda_{k + OVERSAMPLING} / lambda_k) ** DIFFERENTIABLE_STEPS``.

Orthonormalisation avoids Householder QR, which is slow in XLA on CPUs (over a second for a
2,000 x 110 block). Between the undifferentiated refinements it is shifted CholeskyQR
(Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa, 2020, SIAM J. Sci. Comput. 42:A477)
applied three times: ``block <- block R^-1`` with ``R^T R = block^T block + s I``, a small
shift ``s`` keeping the factorisation defined; it is cheap and nearly orthonormal, which is
all the next refinement needs. In the differentiated steps the block is first rotated onto
the eigenvectors of its Gram matrix and its columns scaled to unit length (a fixed
invertible change of basis, so no gradient is taken through that eigendecomposition, whose
eigenvalues may be nearly equal), then made exactly orthonormal by two CholeskyQR steps
(CholeskyQR2, Fukaya, Nakatsukasa, Yanagisawa & Yamamoto, 2014), whose Gram matrices are
then close to the identity; those gradients are well defined.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

OVERSAMPLING = 10
DIFFERENTIABLE_STEPS = 2


def top_eigenpairs(
    apply: Callable[[Float[Array, "n m"]], Float[Array, "n m"]],
    n: int,
    k: int,
    *,
    iterations: int,
    key: PRNGKeyArray | None = None,
    dtype=jnp.float32,
) -> tuple[Float[Array, " k"], Float[Array, "n k"]]:
    """The `k` eigenpairs of largest magnitude of the symmetric ``n x n`` operator `apply`.

    Args:
        apply: ``Q -> A Q`` for the symmetric matrix ``A``.
        n: the size of ``A``.
        k: eigenpairs wanted (at most `n`).
        iterations: undifferentiated subspace refinements (more for slowly decaying
            spectra); ``DIFFERENTIABLE_STEPS`` differentiated ones follow.
        key: draws the starting block; a fixed key by default, which makes the result a
            deterministic function of ``A``.
        dtype: the floating type of the block.

    Returns:
        ``(eigenvalues, eigenvectors)``, by decreasing magnitude; each eigenvector's sign is
        fixed so that its largest-magnitude entry is positive.
    """
    key = jax.random.key(0) if key is None else key
    width = min(k + OVERSAMPLING, n)
    basis = _orthonormalise_fast(apply(jax.random.normal(key, (n, width), dtype)))
    basis = jax.lax.fori_loop(0, iterations, lambda _, q: _orthonormalise_fast(apply(q)), basis)
    basis = jax.lax.stop_gradient(basis)
    for _ in range(DIFFERENTIABLE_STEPS):
        basis = orthonormalise(apply(basis))
    restricted = basis.T @ apply(basis)
    eigenvalues, rotation = jnp.linalg.eigh((restricted + restricted.T) / 2)
    order = jnp.argsort(-jnp.abs(eigenvalues))[:k]
    vectors = basis @ rotation[:, order]
    pivots = jnp.argmax(jnp.abs(vectors), axis=0)
    signs = jnp.sign(vectors[pivots, jnp.arange(vectors.shape[1])])
    return eigenvalues[order], vectors * jnp.where(signs == 0, 1.0, signs)


def orthonormalise(block: Float[Array, "n m"]) -> Float[Array, "n m"]:
    """An orthonormal basis of the span of the columns of `block` (``n >= m``), accurate
    even for ill-conditioned blocks (see the module docstring)."""
    _, rotation = jnp.linalg.eigh(jax.lax.stop_gradient(block.T @ block))
    rotation = rotation[:, ::-1]  # dominant directions first, as Gram-Schmidt should see them
    rotated = jax.lax.stop_gradient(block @ rotation)
    lengths = jnp.maximum(jnp.linalg.norm(rotated, axis=0), jnp.finfo(block.dtype).tiny)
    block = block @ (rotation / lengths)
    for _ in range(2):
        gram = block.T @ block
        jitter = (
            jnp.finfo(block.dtype).eps * jnp.trace(gram) * jnp.eye(gram.shape[0], dtype=gram.dtype)
        )
        lower = jnp.linalg.cholesky(gram + jitter)
        block = jax.scipy.linalg.solve_triangular(lower, block.T, lower=True).T
    return block


def _orthonormalise_fast(block: Float[Array, "n m"]) -> Float[Array, "n m"]:
    """A nearly orthonormal basis of the span of the columns of `block`: three shifted
    CholeskyQR steps, cheap and enough between refinements (see the module docstring)."""
    m = block.shape[1]
    for _ in range(3):
        gram = block.T @ block
        shift = m * jnp.finfo(block.dtype).eps * jnp.trace(gram)
        lower = jnp.linalg.cholesky(gram + shift * jnp.eye(m, dtype=gram.dtype))
        inverse = jax.scipy.linalg.solve_triangular(lower, jnp.eye(m, dtype=gram.dtype), lower=True)
        block = block @ inverse.T
    return block
