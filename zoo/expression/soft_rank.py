"""A differentiable descending rank with linear memory.

For scores ``s`` and a temperature ``tau > 0``::

    r_i = 1/2 + sum_j sigmoid((s_j - s_i) / tau)

(the ``j = i`` term contributes the other 1/2). As ``tau -> 0`` each sigmoid tends to the
step function, so ``r_i`` tends to ``1 + #{j : s_j > s_i}`` plus half the number of other
scores tied with ``s_i``: the hard descending rank, ties averaged (Qin et al., 2010, "A
general approximation framework for direct optimization of information retrieval
measures"). The sum is evaluated in blocks of rows under `jax.checkpoint`, so memory is
``O(block_size * n)`` in the forward and the backward pass instead of ``O(n^2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def soft_rank(
    scores: Float[Array, " n"], temperature: float | Float[Array, ""], *, block_size: int = 1024
) -> Float[Array, " n"]:
    """Soft descending ranks of `scores` (1 = largest); see the module docstring.

    Args:
        scores: the values to rank.
        temperature: sharpness; smaller is closer to the hard rank.
        block_size: rows of the pairwise comparison evaluated at once (memory knob).
    """
    n = scores.shape[0]
    block = min(block_size, n)
    n_blocks = -(-n // block)
    padded = jnp.pad(scores, (0, n_blocks * block - n)).reshape(n_blocks, block)

    @jax.checkpoint
    def block_ranks(rows: Float[Array, " block"]) -> Float[Array, " block"]:
        return 0.5 + jax.nn.sigmoid((scores[None, :] - rows[:, None]) / temperature).sum(axis=1)

    return jax.lax.map(block_ranks, padded).reshape(-1)[:n]


def hard_rank(scores: Float[Array, " n"]) -> Float[Array, " n"]:
    """The limit of `soft_rank` as the temperature goes to 0: descending rank, ties averaged."""
    greater = (scores[None, :] > scores[:, None]).sum(axis=1)
    ties = (scores[None, :] == scores[:, None]).sum(axis=1) - 1
    return 1.0 + greater + 0.5 * ties
