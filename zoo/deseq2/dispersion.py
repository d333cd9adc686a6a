"""Gene-wise NB dispersions, DESeq2's way, all genes at once.

Love, Huber & Anders (2014, Genome Biology 15:550), "Dispersion estimation":

- **Starting values** (`initial_dispersions`): the smaller of a rough estimate from the
  residuals of a linear fit of normalised counts ``q = K / s`` on the design,
  ``sum_j ((q - q_hat)^2 - q_hat) / ((n - p) q_hat^2)`` with ``q_hat >= 1``, and the
  moments estimate ``(var(q) - mean(1/s) mean(q)) / mean(q)^2``; clipped to the bounds.
- **Means** (`linear_means`): when the design has as many distinct rows as coefficients the
  means are the linear fit ``s * q_hat`` floored at ``min_mean``; otherwise a GLM fit.
- **Estimate** (`fit_dispersions`): for fixed means ``mu``, ``log alpha`` minimises the
  Cox-Reid adjusted negative log-likelihood (Cox & Reid, 1987)

      -sum_j log NB(y_j; mu_j, alpha) + 1/2 log det(X^T W X) + (log alpha - m)^2 / (2 v),
      W = mu / (1 + alpha mu),

  where the last term is the log-normal prior of the MAP step (absent for gene-wise
  estimates: ``1 / v = 0``), bounded to ``[min_dispersion, max_dispersion]``.

The minimiser is Newton's method on the derivative in ``log alpha``, safeguarded by a
bracket (Press et al., Numerical Recipes, ``rtsafe``): a point where the derivative is
positive becomes the bracket's upper end, negative its lower end, and a Newton step that
leaves the bracket, meets negative curvature or fails to halve the move before last is
replaced by bisection. It stops when the derivative falls below 1e-5, the gradient
tolerance of scipy's L-BFGS-B that pydeseq2 uses; near ``alpha -> 0`` the objective is flat
(the Poisson limit) and the stopping point there is a matter of tolerance. L-BFGS-B also
stops on a small *relative* decrease of the objective, and so stays at a starting value of
``min_dispersion`` where the objective is nearly flat even when an interior minimum lies
further on; this solver goes on to it (on airway about 1% of genes, e.g. 0.048 where
pydeseq2 reports 1e-8, 7.7 log-likelihood units better), which moves the trend's ``a0`` by
a few percent. The digamma differences are formed without cancellation
(`zoo.deseq2.negative_binomial.digamma_difference`). The iterations run without gradients; the
optimum is differentiated implicitly (`zoo.common.implicit`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from zoo.common.implicit import with_implicit_gradient
from zoo.common.small_linalg import batched_matmul, spd_inverse, weighted_gram
from zoo.deseq2.negative_binomial import digamma_difference, trigamma_difference

STEP_TOLERANCE = 1e-8  # in log alpha
GRADIENT_TOLERANCE = 1e-5  # on d objective / d log alpha: L-BFGS-B's default, as pydeseq2
MAX_STEP = 2.0  # largest Newton move in log alpha, a factor e^2 in alpha


def linear_means(
    normed: Float[Array, "samples genes"],
    size_factors: Float[Array, " samples"],
    design: Float[Array, "samples coefficients"],
    min_mean: float,
) -> Float[Array, "samples genes"]:
    """``max(s * q_hat, min_mean)`` with ``q_hat`` the least-squares fit of `normed`."""
    fitted = design @ (jnp.linalg.pinv(design) @ normed)
    return jnp.maximum(size_factors[:, None] * fitted, min_mean)


def initial_dispersions(
    normed: Float[Array, "samples genes"],
    size_factors: Float[Array, " samples"],
    design: Float[Array, "samples coefficients"],
    min_dispersion: float,
    max_dispersion: float,
) -> Float[Array, " genes"]:
    """The rough/moments starting values of the module docstring (no gradient)."""
    normed, size_factors = jax.lax.stop_gradient((normed, size_factors))
    n, p = design.shape
    fitted = jnp.maximum(design @ (jnp.linalg.pinv(design) @ normed), 1.0)
    rough = (((normed - fitted) ** 2 - fitted) / ((n - p) * fitted**2)).sum(axis=0)
    mean = normed.mean(axis=0)
    safe_mean = jnp.where(mean > 0, mean, 1.0)
    excess = normed.var(axis=0, ddof=1) - jnp.mean(1.0 / size_factors) * mean
    moments = jnp.where(mean > 0, excess / safe_mean**2, 0.0)
    return jnp.clip(jnp.minimum(jnp.maximum(rough, 0.0), moments), min_dispersion, max_dispersion)


def _derivatives(log_alpha, counts, means, design, prior_mean, precision):
    """First and second derivatives in ``log alpha`` of the objective (module docstring).

    With ``r = 1 / alpha`` the per-sample log-likelihood has ``dl/dr = psi(y + r) - psi(r)
    - log(1 + mu / r) + (mu - y) / (r + mu)``; ``d(log alpha) = -dr / r``. The Cox-Reid term
    uses ``d log det M = tr(M^-1 dM)`` and ``d tr(M^-1 dM) = tr(M^-1 d2M) - tr((M^-1 dM)^2)``.
    """
    alpha = jnp.exp(log_alpha)
    size = 1.0 / alpha
    d_size = (
        digamma_difference(counts, size)
        - jnp.log1p(alpha * means)
        + (means - counts) / (size + means)
    )
    d2_size = (
        trigamma_difference(counts, size)
        + means / (size * (size + means))
        - (means - counts) / (size + means) ** 2
    )
    # One stacked reduction, so that the digamma terms are computed once, not per sum.
    terms = jnp.stack([size * d_size, -(size**2 * d2_size + size * d_size)]).sum(axis=1)

    n_genes, p = means.shape[1], design.shape[1]
    weights = means / (1.0 + alpha * means)
    d_weights = -alpha * weights**2
    d2_weights = d_weights + 2.0 * alpha**2 * weights**3
    grams = weighted_gram(design, jnp.concatenate([weights, d_weights, d2_weights], axis=1))
    gram, d_gram, d2_gram = (grams[..., k * n_genes : (k + 1) * n_genes] for k in range(3))
    inverse = jax.lax.optimization_barrier(spd_inverse(gram))  # reused: compute it once
    first = jax.lax.optimization_barrier(batched_matmul(inverse, d_gram))
    pairs = [(i, j) for i in range(p) for j in range(p)]
    second = sum(inverse[i, j] * d2_gram[i, j] for i, j in pairs)
    squared = sum(first[i, j] * first[j, i] for i, j in pairs)
    gradient = terms[0] + 0.5 * sum(first[i, i] for i in range(p))
    curvature = terms[1] + 0.5 * (second - squared)
    return gradient + precision * (log_alpha - prior_mean), curvature + precision


@functools.partial(jax.jit, static_argnames=("min_dispersion", "max_dispersion", "max_iterations"))
def fit_dispersions(
    counts: Float[Array, "samples genes"],
    means: Float[Array, "samples genes"],
    design: Float[Array, "samples coefficients"],
    start: Float[Array, " genes"],
    prior_center: Float[Array, " genes"],
    prior_variance: Float[ArrayLike, ""],
    *,
    min_dispersion: float,
    max_dispersion: float,
    max_iterations: int,
) -> Float[Array, " genes"]:
    """The minimising dispersion of every gene, searched from `start`.

    Args:
        counts, means: observed counts and the fitted means they are held at.
        design: the design matrix (for the Cox-Reid term).
        start: starting dispersions.
        prior_center, prior_variance: the MAP step's log-normal prior, ``log alpha ~
            N(log prior_center, prior_variance)``; an infinite variance (no prior) gives
            the gene-wise estimates.
        min_dispersion, max_dispersion: the bounds.
        max_iterations: cap on Newton iterations.

    Returns:
        The dispersions (differentiable in every array argument but `start`); genes with
        no count keep `start`.
    """
    low, high = math.log(min_dispersion), math.log(max_dispersion)
    params = (counts, means, design, jnp.log(prior_center), 1.0 / jnp.asarray(prior_variance))
    frozen = jax.lax.stop_gradient(params)

    def step(state):
        log_alpha, lower, upper, last_move, done, iteration = state
        gradient, curvature = _derivatives(log_alpha, *frozen)
        lower = jnp.where(gradient < 0, log_alpha, lower)
        upper = jnp.where(gradient > 0, log_alpha, upper)
        newton = jnp.where(curvature > 0, gradient / curvature, jnp.sign(gradient) * MAX_STEP)
        newton = jnp.clip(log_alpha - jnp.clip(newton, -MAX_STEP, MAX_STEP), low, high)
        # Newton must land strictly inside the bracket (or test a bound) and at least halve
        # the move before last; otherwise bisect.
        inside = ((newton > lower) | (newton == low)) & ((newton < upper) | (newton == high))
        shrinking = jnp.abs(newton - log_alpha) <= 0.5 * last_move
        trial = jnp.where(inside & shrinking, newton, 0.5 * (lower + upper))
        pinned = ((log_alpha <= low) & (gradient > 0)) | ((log_alpha >= high) & (gradient < 0))
        finished = (
            ~jnp.isfinite(gradient)
            | (jnp.abs(gradient) < GRADIENT_TOLERANCE)
            | pinned
            | (jnp.abs(trial - log_alpha) < STEP_TOLERANCE)
        )
        stay = done | finished
        move = jnp.where(stay, last_move, jnp.abs(trial - log_alpha))
        return jnp.where(stay, log_alpha, trial), lower, upper, move, stay, iteration + 1

    def running(state):
        return ~jnp.all(state[4]) & (state[5] < max_iterations)

    start = jnp.clip(jnp.log(jax.lax.stop_gradient(start)), low, high)
    unfitted = ~jnp.any(frozen[0] > 0, axis=0)  # no count, no likelihood to maximise
    bracket = (jnp.full_like(start, low), jnp.full_like(start, high))
    state = (start, *bracket, jnp.full_like(start, jnp.inf), unfitted, 0)
    optimum = jax.lax.while_loop(running, step, state)[0]
    interior = (optimum > low) & (optimum < high) & ~unfitted
    return jnp.exp(with_implicit_gradient(_optimum_tangent, optimum, interior, *params))


def _optimum_tangent(log_alpha, params, tangents):
    """Implicit derivative of the optimum; zero where it sits on a bound."""
    interior, *params = params
    _, *tangents = tangents
    _, gradient_tangent = jax.jvp(
        lambda *p: _derivatives(log_alpha, *p)[0], tuple(params), tuple(tangents)
    )
    _, curvature = _derivatives(log_alpha, *params)
    usable = interior & (curvature > 0)
    return jnp.where(usable, -gradient_tangent / jnp.where(usable, curvature, 1.0), 0.0)
