"""scGPT's per-cell quantile binning of expression values (Cui et al., 2024; ``binning`` in
scGPT's ``scgpt/preprocess.py``).

For one cell with ``n`` expressed genes (count > 0), the ``n_bins - 1`` edges are the
quantiles of their counts at ``n_bins - 1`` evenly spaced probabilities from 0 to 1 (linear
interpolation, numpy's default). A count gets a bin between ``right`` and ``left``, the
numbers of edges below it and not above it (numpy's ``digitize`` with ``right=True`` and
``right=False``): ``ceil(left - r * (left - right))``. scGPT draws ``r`` uniformly in
``[0, 1)`` from numpy's global generator, so a count lying on several equal edges (a count
shared by many genes) lands in a random one of its bins. Here ``r`` is drawn from a JAX key
when one is given, and is ``1/2`` without a key (the middle of the tied bins), so the result
is deterministic given the key. Where ``left - right <= 1`` the bin is ``left`` for every
``r``, so tie-free counts get scGPT's bins exactly. Unexpressed genes get bin 0.

The edge counts are computed from ranks in exact integer arithmetic: edge ``k`` (of
``m = n_bins - 2`` intervals) sits at sorted position ``h_k = k (n - 1) / m``, and a count
whose equal values occupy sorted positions ``a..b`` has ``left = #{k : k (n-1) <= b m}`` and
``right = #{k : k (n-1) < a m}``. Binning is invariant under per-cell monotone transforms of
the counts (scaling, ``log1p``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Real


def quantile_bins(
    counts: Real[Array, " n_genes"], n_bins: int, *, key: PRNGKeyArray | None = None
) -> Float[Array, " n_genes"]:
    """The quantile bin of every gene's count in one cell (see the module docstring).

    Args:
        counts: the cell's non-negative counts or expression.
        n_bins: scGPT's ``n_bins`` (51 for whole-human); bins run from 1 to ``n_bins - 1``.
        key: draws the bin of counts on several equal edges; None takes their middle bin.

    Returns:
        The bins as floats (0 for unexpressed genes), ready for a continuous value encoder.
    """
    intervals = n_bins - 2
    expressed = counts > 0
    n = expressed.sum()
    ascending = jnp.sort(jnp.where(expressed, counts, jnp.inf))
    first = jnp.searchsorted(ascending, counts, side="left")  # a: first of the equal values
    last = jnp.searchsorted(ascending, counts, side="right") - 1  # b: last of them
    span = jnp.maximum(n - 1, 0)
    edges = jnp.arange(intervals + 1)
    left = (edges[None, :] * span <= last[:, None] * intervals).sum(1)
    right = (edges[None, :] * span < first[:, None] * intervals).sum(1)
    draw = jnp.full(counts.shape, 0.5) if key is None else jax.random.uniform(key, counts.shape)
    bins = jnp.ceil(left - draw * (left - right))
    return jnp.where(expressed, bins, 0.0).astype(jnp.float32)
