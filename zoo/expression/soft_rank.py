"""A differentiable descending rank with linear memory, over the entries a mask keeps.

For scores ``s``, a mask ``m`` of the entries to rank (all by default) and a temperature
``tau > 0``, a kept entry ``i`` gets::

    r_i = 1/2 + sum_{j kept} sigmoid((s_j - s_i) / tau)

(the ``j = i`` term contributes the other 1/2). As ``tau -> 0`` each sigmoid tends to the
step function, so ``r_i`` tends to ``1 + #{j kept : s_j > s_i}`` plus half the number of
other kept scores tied with ``s_i``: the hard descending rank among the kept entries, ties
averaged (Qin et al., 2010, "A general approximation framework for direct optimization of
information retrieval measures"). Because ``sigmoid(a) + sigmoid(-a) = 1``, the kept ranks
sum to ``k (k + 1) / 2`` for ``k`` kept entries at every temperature, and each lies in
``[1, k]``. Entries left out take part in no comparison: they are ranked tied last,
``k + (n - k + 1) / 2``, a constant, as in the hard rank. Geneformer ranks only a cell's
expressed genes, so `GeneTokenizer.soft_ranks` keeps those.

The sum is written here rather than taken from a library: JAX's ``rankdata`` is a hard
rank, and the soft sorting libraries (e.g. the permutahedron projection of Blondel et al.,
2020) are not kept by this project. It is evaluated in blocks of rows under
`jax.checkpoint`, with the mask applied inside each block, so memory is
``O(block_size * n)`` in the forward and the backward pass instead of ``O(n^2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.stats
from jaxtyping import Array, Bool, Float


def soft_rank(
    scores: Float[Array, " n"],
    temperature: float | Float[Array, ""],
    *,
    mask: Bool[Array, " n"] | None = None,
    block_size: int = 1024,
) -> Float[Array, " n"]:
    """Soft descending ranks of `scores` among the entries `mask` keeps (1 = largest);
    see the module docstring.

    Args:
        scores: the values to rank.
        temperature: sharpness; smaller is closer to the hard rank.
        mask: the entries to rank (default: all); the others are ranked tied last.
        block_size: rows of the pairwise comparison evaluated at once (memory knob).

    Returns:
        The soft ranks, in ``[1, k]`` for the ``k`` kept entries, ``k + (n - k + 1) / 2``
        for the others.
    """
    n = scores.shape[0]
    keep = jnp.ones(n, bool) if mask is None else mask
    weights = keep.astype(scores.dtype)
    block = min(block_size, n)
    n_blocks = -(-n // block)
    padded = jnp.pad(scores, (0, n_blocks * block - n)).reshape(n_blocks, block)

    @jax.checkpoint
    def block_ranks(rows: Float[Array, " block"]) -> Float[Array, " block"]:
        above = jax.nn.sigmoid((scores[None, :] - rows[:, None]) / temperature)
        return 0.5 + (above * weights[None, :]).sum(axis=1)

    kept_ranks = jax.lax.map(block_ranks, padded).reshape(-1)[:n]
    n_kept = weights.sum()
    return jnp.where(keep, kept_ranks, n_kept + (n - n_kept + 1) / 2)


def hard_rank(
    scores: Float[Array, " n"], mask: Bool[Array, " n"] | None = None
) -> Float[Array, " n"]:
    """The limit of `soft_rank` as the temperature goes to 0: descending rank among the
    entries `mask` keeps (default: all), ties averaged, the others tied last
    (`jax.scipy.stats.rankdata`). `scores` must be finite."""
    descending = -scores if mask is None else jnp.where(mask, -scores, jnp.inf)
    return jax.scipy.stats.rankdata(descending, method="average").astype(scores.dtype)
