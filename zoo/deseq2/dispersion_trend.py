"""DESeq2's dispersion-mean trend and the width of the prior around it.

Love, Huber & Anders (2014, Genome Biology 15:550):

- **Parametric trend** (`fit_parametric_trend`): ``alpha_tr(m) = a0 + a1 / m`` over the mean
  of normalised counts ``m``, fitted to the gene-wise estimates by a gamma-family GLM with
  identity link (iteratively reweighted least squares, weights ``1 / alpha_tr^2``). Genes
  whose estimate is below ``1e-4`` or at least ``15`` times the fitted value are dropped and
  the fit repeated until ``sum(log(a_new / a_old)^2) < 1e-6``. If a coefficient falls to
  ``<= 1e-10`` the parametric form has failed.
- **Mean trend** (`mean_trend`): the 0.1%-trimmed mean of the estimates above
  ``10 * min_dispersion``; DESeq2's fallback.
- **Prior variance** (`prior_variance`): from the log residuals ``r = log alpha_gw -
  log alpha_tr`` of the genes with ``alpha_gw >= 100 * min_dispersion``,
  ``max(MAD(r)^2 - trigamma((n - p) / 2), 0.25)``; ``MAD(r)^2`` is also returned, as the
  MAP step keeps the gene-wise estimate of genes more than two of its square roots above
  the trend.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import scipy.special
from jaxtyping import Array, Bool, Float

from zoo.common.implicit import with_implicit_gradient

NORMAL_QUARTILE = 0.6744897501960817  # Phi^-1(3/4): makes the MAD consistent for sigma
GLM_ITERATIONS = 100
GLM_TOLERANCE = 1e-12
MAX_REFITS = 30


def trend_values(
    coefficients: Float[Array, "2"], base_mean: Float[Array, " genes"]
) -> Float[Array, " genes"]:
    """``a0 + a1 / base_mean``."""
    return coefficients[0] + coefficients[1] / base_mean


def _gamma_glm(
    targets: Float[Array, " genes"], inverse_mean: Float[Array, " genes"], keep: Array
) -> Float[Array, "2"]:
    """Gamma GLM, identity link, of `targets` on ``[1, inverse_mean]`` over `keep`."""
    x = jnp.stack([jnp.ones_like(inverse_mean), inverse_mean], axis=1)
    weight = keep.astype(targets.dtype)

    def step(state):
        coefficients, _, iteration = state
        fitted = x @ coefficients
        w = weight / fitted**2
        new = jnp.linalg.solve((x.T * w) @ x, (x.T * w) @ targets)
        change = jnp.max(jnp.abs(new - coefficients) / (jnp.abs(coefficients) + 1e-30))
        return new, change, iteration + 1

    def running(state):
        return (state[1] > GLM_TOLERANCE) & (state[2] < GLM_ITERATIONS)

    start = jnp.ones(2, targets.dtype)
    return jax.lax.while_loop(running, step, (start, jnp.inf, 0))[0]


@jax.jit
def fit_parametric_trend(
    genewise: Float[Array, " genes"],
    base_mean: Float[Array, " genes"],
    usable: Bool[Array, " genes"],
) -> tuple[Float[Array, "2"], Bool[Array, ""]]:
    """Coefficients ``(a0, a1)`` and whether the parametric fit succeeded.

    `usable` marks the genes that may enter the fit (those with a count). Differentiable in
    `genewise` and `base_mean` (implicitly, at the final fit's optimum).
    """
    inverse_mean = 1.0 / jnp.where(usable, base_mean, 1.0)
    targets, covariate = jax.lax.stop_gradient((genewise, inverse_mean))

    def refit(state):
        coefficients, _, keep, _, _, iteration = state
        new = _gamma_glm(targets, covariate, keep)
        ratio = targets / (new[0] + new[1] * covariate)
        failed = ~jnp.all(jnp.isfinite(new) & (new > 1e-10))
        kept = keep & (ratio >= 1e-4) & (ratio < 15.0)
        return new, coefficients, kept, keep, failed, iteration + 1

    def running(state):
        coefficients, previous, _, _, failed, iteration = state
        moving = jnp.sum(jnp.log(coefficients / previous) ** 2) >= 1e-6
        return moving & ~failed & (iteration < MAX_REFITS)

    ones = jnp.ones(2, genewise.dtype)
    state = (ones, 0.1 * ones, usable, usable, jnp.zeros((), bool), 0)
    coefficients, _, _, fitted_on, failed, _ = jax.lax.while_loop(running, refit, state)
    weights = fitted_on.astype(genewise.dtype)
    coefficients = with_implicit_gradient(
        _coefficient_tangent, coefficients, genewise, inverse_mean, weights
    )
    return coefficients, ~failed


def _gamma_gradient(coefficients, targets, inverse_mean, weights):
    """Gradient in ``(a0, a1)`` of ``sum_g w_g (t_g / f_g + log f_g)``, ``f = a0 + a1 / m``."""
    fitted = coefficients[0] + coefficients[1] * inverse_mean
    residual = weights * (1.0 / fitted - targets / fitted**2)
    return jnp.stack([residual.sum(), (residual * inverse_mean).sum()])


def _coefficient_tangent(coefficients, params, tangents):
    """Implicit derivative of the gamma-GLM optimum (the mask's tangent is ignored)."""
    targets, inverse_mean, weights = params
    _, gradient_tangent = jax.jvp(
        lambda t, m: _gamma_gradient(coefficients, t, m, weights),
        (targets, inverse_mean),
        tuple(tangents[:2]),
    )
    hessian = jax.jacfwd(_gamma_gradient)(coefficients, targets, inverse_mean, weights)
    return -jnp.linalg.solve(hessian, gradient_tangent)


def mean_trend(
    genewise: Float[Array, " genes"], usable: Bool[Array, " genes"], min_dispersion: float
) -> Float[Array, ""]:
    """The 0.1%-trimmed mean of the usable estimates above ``10 * min_dispersion``."""
    keep = usable & (genewise > 10.0 * min_dispersion)
    n = keep.sum()
    cut = jnp.floor(0.001 * n).astype(n.dtype)
    ordered = jnp.sort(jnp.where(keep, genewise, jnp.inf))
    rank = jnp.arange(genewise.shape[0])
    inside = (rank >= cut) & (rank < n - cut)
    return jnp.where(inside, ordered, 0.0).sum() / (n - 2 * cut)


def prior_variance(
    genewise: Float[Array, " genes"],
    trend: Float[Array, " genes"],
    usable: Bool[Array, " genes"],
    min_dispersion: float,
    residual_dof: int,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """``(prior variance of log alpha, MAD(r)^2)`` (module docstring)."""
    above = usable & (genewise >= 100.0 * min_dispersion)
    residual = jnp.log(jnp.where(above, genewise, 1.0)) - jnp.log(jnp.where(above, trend, 1.0))
    residual = jnp.where(above, residual, jnp.nan)
    center = jnp.nanmedian(residual)
    spread = jnp.nanmedian(jnp.abs(residual - center)) / NORMAL_QUARTILE
    squared = spread**2
    expected = float(scipy.special.polygamma(1, residual_dof / 2.0))
    return jnp.maximum(squared - expected, 0.25), squared


class DispersionPrior(NamedTuple):
    """The trend and the log-normal prior around it (`dispersion_prior`)."""

    coefficients: Float[Array, "2"]
    trend: Float[Array, " genes"]
    variance: Float[Array, ""]
    squared_residual_scale: Float[Array, ""]


@functools.partial(jax.jit, static_argnames=("parametric", "min_dispersion", "residual_dof"))
def dispersion_prior(
    genewise: Float[Array, " genes"],
    base_mean: Float[Array, " genes"],
    *,
    parametric: bool,
    min_dispersion: float,
    residual_dof: int,
) -> DispersionPrior:
    """The trend (parametric, else or on failure the mean: coefficients ``(mean, 0)``), its
    value at every gene, and the prior variance with ``MAD(r)^2``, from the genes with a
    count (``base_mean > 0``)."""
    usable = base_mean > 0
    safe_mean = jnp.where(usable, base_mean, 1.0)
    flat = mean_trend(genewise, usable, min_dispersion)
    coefficients = jnp.stack([flat, jnp.zeros_like(flat)])
    if parametric:
        fitted, success = fit_parametric_trend(genewise, safe_mean, usable)
        coefficients = jnp.where(success, fitted, coefficients)
    trend = trend_values(coefficients, safe_mean)
    variance, squared = prior_variance(genewise, trend, usable, min_dispersion, residual_dof)
    return DispersionPrior(coefficients, trend, variance, squared)


@jax.jit
def shrunken_dispersions(
    genewise: Float[Array, " genes"], posterior: Float[Array, " genes"], prior: DispersionPrior
) -> Float[Array, " genes"]:
    """The MAP dispersions, except the gene-wise value for genes more than two ``MAD(r)``
    above the trend (DESeq2 does not shrink those)."""
    limit = jnp.log(prior.trend) + 2.0 * jnp.sqrt(prior.squared_residual_scale)
    return jnp.where(jnp.log(genewise) > limit, genewise, posterior)
