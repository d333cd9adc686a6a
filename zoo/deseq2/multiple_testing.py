"""Benjamini-Hochberg adjustment and DESeq2's independent filtering.

- `benjamini_hochberg`: ``padj_(i) = min_{k >= i} min(1, p_(k) m / k)`` over the ``m``
  tested p-values sorted ascending (Benjamini & Hochberg, 1995); untested genes get NaN.
- `independent_filtering` (Bourgon, Gentleman & Huber, 2010, PNAS 107:9546; DESeq2's
  ``results``): for 50 cut-offs at evenly spaced quantiles ``theta`` of the mean normalised
  count (from the fraction of genes with mean 0 to 0.95), adjust only the genes above the
  cut-off and count rejections at level `alpha`. A lowess curve (R's, with 3 robustness
  iterations as DESeq2 calls it; pydeseq2's runs 2) is fitted to the counts against
  ``theta``; the chosen cut-off is the first whose count exceeds the curve's maximum minus
  the root mean square of its residuals (the first cut-off when no count exceeds 10). Genes
  below it get NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

N_CUTOFFS = 50
LOWESS_FRACTION = 1 / 5
LOWESS_ROBUST_ITERATIONS = 3  # R's lowess(iter = 3): refits after the first fit


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


def _tricube(r: Float[Array, "..."]) -> Float[Array, "..."]:
    """R's ``lowess`` neighbourhood weights of scaled distances `r`: 1 up to 0.001,
    ``(1 - r^3)^3`` up to 0.999, 0 beyond."""
    return jnp.where(r <= 0.001, 1.0, jnp.where(r <= 0.999, (1 - jnp.minimum(r, 1) ** 3) ** 3, 0))


def _bisquare(u: Float[Array, "..."]) -> Float[Array, "..."]:
    """R's ``lowess`` robustness weights of residuals over ``6 MAD``: 1 up to 0.001,
    ``(1 - u^2)^2`` up to 0.999, 0 beyond."""
    return jnp.where(u <= 0.001, 1.0, jnp.where(u <= 0.999, (1 - jnp.minimum(u, 1) ** 2) ** 2, 0))


def lowess(x: Float[Array, " n"], y: Float[Array, " n"]) -> Float[Array, " n"]:
    """R's ``lowess(x, y, f = LOWESS_FRACTION, iter = 3)`` (Cleveland, 1979), fitted at every
    point (R's ``delta`` skips none of DESeq2's evenly spaced cut-offs).

    At each ``x_i``: a weighted straight line through the ``floor(f n)`` nearest points,
    tricube weights over the distance ``h_i`` to the farthest of them (`_tricube`), the slope
    dropped when the weighted spread of ``x`` is below 0.001 of its range. Then
    ``LOWESS_ROBUST_ITERATIONS`` refits, each with the weights multiplied by bisquare
    robustness weights of the last fit's residuals over six times their median absolute
    value (`_bisquare`), stopping early when that is below ``1e-7`` of the mean ``|y|``.
    """
    n = x.shape[0]
    neighbours = max(2, min(n, int(LOWESS_FRACTION * n + 1e-7)))
    gaps = jnp.abs(x[:, None] - x[None, :])  # [i, k]: from the fit at x_i to point k
    span = jnp.sort(gaps, axis=1)[:, neighbours - 1 : neighbours]
    local = jnp.where(span > 0, _tricube(gaps / jnp.where(span > 0, span, 1.0)), gaps == 0)
    offsets = x[None, :] - x[:, None]
    x_range = x.max() - x.min()
    scale = jnp.mean(jnp.abs(y))

    def local_lines(robustness):
        weights = local * robustness[None, :]
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / jnp.where(total > 0, total, 1.0)
        centre = (weights * offsets).sum(axis=1, keepdims=True)  # weighted mean x, minus x_i
        spread = (weights * (offsets - centre) ** 2).sum(axis=1, keepdims=True)
        sloped = (span > 0) & (jnp.sqrt(spread) > 0.001 * x_range)
        tilt = 1 - centre * (offsets - centre) / jnp.where(sloped, spread, 1.0)
        weights = jnp.where(sloped, weights * tilt, weights)
        return jnp.where(total[:, 0] > 0, weights @ y, y)

    def step(_, carry):
        robustness, fitted, stopped = carry
        fitted = jnp.where(stopped, fitted, local_lines(robustness))
        residual = jnp.abs(y - fitted)
        six_mad = 6.0 * jnp.median(residual)
        stopped = stopped | (six_mad < 1e-7 * scale)
        robustness = _bisquare(residual / jnp.where(six_mad > 0, six_mad, 1.0))
        return robustness, fitted, stopped

    start = (jnp.ones_like(y), jnp.zeros_like(y), jnp.zeros((), bool))
    return jax.lax.fori_loop(0, 1 + LOWESS_ROBUST_ITERATIONS, step, start)[1]


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
