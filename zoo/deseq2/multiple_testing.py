"""Benjamini-Hochberg adjustment and DESeq2's independent filtering.

- `benjamini_hochberg`: ``padj_(i) = min_{k >= i} min(1, p_(k) m / k)`` over the ``m``
  tested p-values sorted ascending (Benjamini & Hochberg, 1995); untested genes get NaN.
- `independent_filtering` (Bourgon, Gentleman & Huber, 2010, PNAS 107:9546; DESeq2's
  ``results``): for 50 cut-offs at evenly spaced quantiles ``theta`` of the mean normalised
  count (from the fraction of genes with mean 0 to 0.95), adjust only the genes above the
  cut-off and count rejections at level `alpha`. A lowess curve is fitted to the counts
  against ``theta``; the chosen cut-off is the first whose count exceeds the curve's
  maximum minus the root mean square of its residuals (the first cut-off when no count
  exceeds 10). Genes below it get NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

N_CUTOFFS = 50
LOWESS_FRACTION = 1 / 5
LOWESS_ROBUST_ITERATIONS = 3


def _adjust_sorted(
    sorted_pvalues: Float[Array, " genes"], members: Bool[Array, "*sets genes"]
) -> Float[Array, "*sets genes"]:
    """BH over each set of `members` of p-values already sorted ascending; +inf outside."""
    rank = jnp.cumsum(members, axis=-1)
    m = rank[..., -1:]
    scaled = jnp.minimum(sorted_pvalues * m / jnp.maximum(rank, 1), 1.0)
    running = jax.lax.cummin(
        jnp.where(members, scaled, jnp.inf), axis=members.ndim - 1, reverse=True
    )
    return jnp.where(members, running, jnp.inf)


def _unsort(order: Array, sorted_values: Float[Array, " genes"]) -> Float[Array, " genes"]:
    return jnp.zeros_like(sorted_values).at[order].set(sorted_values)


def benjamini_hochberg(
    pvalues: Float[Array, " genes"], tested: Bool[Array, " genes"]
) -> Float[Array, " genes"]:
    """BH-adjusted p-values of the `tested` genes; NaN elsewhere."""
    order = jnp.argsort(jnp.where(tested, pvalues, jnp.inf))
    adjusted = _unsort(order, _adjust_sorted(pvalues[order], tested[order]))
    return jnp.where(tested, adjusted, jnp.nan)


def lowess(x: Float[Array, " n"], y: Float[Array, " n"]) -> Float[Array, " n"]:
    """Robust locally linear smoothing of `y` on `x` (Cleveland, 1979): tricube weights
    over the nearest ``LOWESS_FRACTION`` of points, then bisquare robustness weights."""
    n = x.shape[0]
    gaps = jnp.abs(x[:, None] - x[None, :])
    span = jnp.sort(gaps, axis=1)[:, math.ceil(LOWESS_FRACTION * n)]
    local = (1 - jnp.clip(gaps / jnp.maximum(span, 1e-12)[None, :], 0, 1) ** 3) ** 3
    # local[k, i]: weight of point k in the fit at x_i

    def robust_pass(_, carry):
        robustness, _ = carry
        w = robustness[:, None] * local
        s0, s1, s2 = w.sum(0), (w * x[:, None]).sum(0), (w * x[:, None] ** 2).sum(0)
        t0, t1 = (w * y[:, None]).sum(0), (w * (x * y)[:, None]).sum(0)
        determinant = s0 * s2 - s1**2
        fitted = ((s2 * t0 - s1 * t1) + (s0 * t1 - s1 * t0) * x) / determinant
        residual = y - fitted
        scale = jnp.median(jnp.abs(residual))
        u = jnp.clip(residual / jnp.where(scale > 0, 6.0 * scale, 1.0), -1, 1)
        robustness = jnp.where(scale > 0, (1 - u**2) ** 2, (jnp.abs(residual) > 0) * 1.0)
        return robustness, fitted

    start = (jnp.ones_like(y), jnp.zeros_like(y))
    return jax.lax.fori_loop(0, LOWESS_ROBUST_ITERATIONS, robust_pass, start)[1]


def independent_filtering(
    pvalues: Float[Array, " genes"],
    base_mean: Float[Array, " genes"],
    alpha: float,
) -> Float[Array, " genes"]:
    """Adjusted p-values after filtering on `base_mean` (module docstring). NaN p-values
    are untested."""
    lower = jnp.mean(base_mean == 0)
    upper = jnp.where(lower < 0.95, 0.95, 1.0)
    theta = jnp.linspace(lower, upper, N_CUTOFFS)
    cutoffs = jnp.quantile(base_mean, theta)
    tested = ~jnp.isnan(pvalues)
    order = jnp.argsort(jnp.where(tested, pvalues, jnp.inf))
    members = tested[order] & (base_mean[order] >= cutoffs[:, None])
    adjusted = _adjust_sorted(pvalues[order], members)
    rejections = jnp.sum(adjusted < alpha, axis=1).astype(pvalues.dtype)
    curve = lowess(theta, rejections)
    positive = rejections > 0
    residual = jnp.where(positive, rejections - curve, 0.0)
    rms = jnp.sqrt(residual @ residual / jnp.maximum(positive.sum(), 1))
    above = rejections > curve.max() - rms
    chosen = jnp.where((rejections.max() > 10) & above.any(), jnp.argmax(above), 0)
    padj = _unsort(order, adjusted[chosen])
    return jnp.where(jnp.isinf(padj), jnp.nan, padj)  # +inf marks genes filtered out
