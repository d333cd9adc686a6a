"""Rotary position embeddings (RoFormer, Su et al., 2021), in the "rotate half" layout
used by ESM-2 and Nucleotide Transformer v2.

Each head's ``head_dim`` features are split into two halves ``x = [x1, x2]``; feature pair
``(x1[i], x2[i])`` at position ``p`` is rotated by the angle ``p * theta_i`` with
``theta_i = BASE^(-2i / head_dim)``::

    rotate(x, p) = x * cos(p * theta) + [-x2, x1] * sin(p * theta)

(``theta`` repeated over both halves). Rotating queries and keys makes their dot product
depend on the positions only through ``p_query - p_key``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

BASE = 10000.0  # the frequency base of RoFormer, ESM-2 and NT v2 (transformers' rope_theta)


def rotary_angles(
    seq_len: int, head_dim: int
) -> tuple[Float[Array, "seq_len head_dim"], Float[Array, "seq_len head_dim"]]:
    """``(cos, sin)`` of ``p * theta`` for positions ``p = 0 .. seq_len-1``, each of the
    ``head_dim / 2`` frequencies written twice (once per half); float32."""
    frequency = BASE ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * frequency
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: Float[Array, "heads seq_len head_dim"]) -> Float[Array, "heads seq_len head_dim"]:
    """`x` (queries or keys of every head) rotated by its positions, as in the module
    docstring; computed in float32 and returned in `x`'s dtype."""
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    cos, sin = rotary_angles(x.shape[1], head_dim)
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated_half = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated_half * sin).astype(x.dtype)
