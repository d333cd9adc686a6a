"""DESeq2's median-of-ratios size factors (Anders & Huber, 2010, Genome Biology 11:R106).

For counts ``K`` (samples x genes), each gene's reference is its geometric mean over the
samples, and sample ``j``'s size factor is the median over genes of ``K_jg / ref_g``:

    s_j = exp(median_g [log K_jg - mean_i log K_ig])

taken over the genes with no zero count (a zero makes the geometric mean 0), on the raw
counts, not on ``log(x + 1)``. As in DESeq2 the factors are not rescaled afterwards.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def usable_for_size_factors(counts: Float[Array, "samples genes"]) -> Bool[Array, " genes"]:
    """The genes counted in every sample, the only ones the median runs over."""
    return jnp.all(counts > 0, axis=0)


def median_of_ratios(counts: Float[Array, "samples genes"]) -> Float[Array, " samples"]:
    """Size factors ``s_j`` (see the module docstring); differentiable in `counts`.

    Every sample gets NaN when no gene is counted in all samples; check with
    `usable_for_size_factors` first.
    """
    usable = usable_for_size_factors(counts)
    log_counts = jnp.log(jnp.where(usable, counts, 1.0))
    log_ratios = log_counts - log_counts.mean(axis=0)
    return jnp.exp(jnp.nanmedian(jnp.where(usable, log_ratios, jnp.nan), axis=1))
