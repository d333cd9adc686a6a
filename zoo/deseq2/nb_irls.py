"""Negative binomial GLM coefficients by IRLS, all genes at once (DESeq2's ``fitNbinomGLMs``).

For gene ``g`` with counts ``y`` over samples, size factors ``s``, design ``X`` and a fixed
dispersion ``alpha``, the model is ``log mu = X beta + log s``. Iteratively reweighted least
squares (Fisher scoring) repeats

    W = mu / (1 + alpha mu),  z = log(mu / s) + (y - mu) / mu,
    beta <- (X^T W X + lambda I)^-1 X^T W z,

from the least-squares fit of ``log(y / s + 0.1)``, with ``mu`` floored at ``min_mean`` and
``lambda = 1e-6``, until the deviance changes by less than ``tolerance`` relative to itself
(Love, Huber & Anders, 2014, Genome Biology 15:550; the constants are DESeq2's).

The loop runs without gradients; the coefficients are differentiated as the root of the
exact score (`zoo.common.implicit`): ``d beta = H^-1 d(score)`` with ``H`` the observed
information. Where a floored mean was active this is the derivative of the unfloored MLE.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, Bool, Float

from zoo.common.implicit import with_implicit_gradient
from zoo.common.small_linalg import row_quadratic_forms, spd_inverse, spd_solve, weighted_gram

RIDGE = 1e-6
MAX_COEFFICIENT = 30.0


class CoefficientFit(NamedTuple):
    """IRLS output for every gene.

    Attributes:
        coefficients: natural-log coefficients ``beta``.
        means: fitted means ``s exp(X beta)`` (not floored).
        hat_diagonals: leverages ``W^1/2 X (X^T W X)^-1 X^T W^1/2`` (for Cook's distance).
        converged: whether the deviance criterion was met before divergence or the cap.
    """

    coefficients: Float[Array, "genes coefficients"]
    means: Float[Array, "samples genes"]
    hat_diagonals: Float[Array, "samples genes"]
    converged: Bool[Array, " genes"]


@functools.partial(jax.jit, static_argnames=("min_mean", "tolerance", "max_iterations"))
def fit_coefficients(
    counts: Float[Array, "samples genes"],
    size_factors: Float[Array, " samples"],
    design: Float[Array, "samples coefficients"],
    dispersions: Float[Array, " genes"],
    *,
    min_mean: float,
    tolerance: float,
    max_iterations: int,
) -> CoefficientFit:
    """Fit ``beta`` for every gene (see the module docstring); differentiable in the inputs."""
    params = (counts, size_factors, design, dispersions)
    y, s, x, alpha = jax.lax.stop_gradient(params)
    ridge = RIDGE * jnp.eye(design.shape[1], dtype=counts.dtype)[:, :, None]
    size = 1.0 / alpha
    # The deviance's terms free of mu, computed once: lgamma(y + r) - lgamma(r) - lgamma(y + 1).
    constant = (gammaln(y + size) - gammaln(size) - gammaln(y + 1.0)).sum(axis=0)

    def floored_mean(beta):  # beta is (coefficients, genes) inside the solver
        return jnp.maximum(s[:, None] * jnp.exp(x @ beta), min_mean)

    def deviance(mu):
        log1p_am = jnp.log1p(alpha * mu)
        return -2.0 * (constant + (xlogy(y, alpha * mu) - (y + size) * log1p_am).sum(axis=0))

    def step(state):
        beta, dev, active, diverged, iteration = state
        mu = floored_mean(beta)
        w = mu / (1.0 + alpha * mu)
        z = jnp.log(mu / s[:, None]) + (y - mu) / mu
        proposal = spd_solve(weighted_gram(x, w) + ridge, x.T @ (w * z))
        blown = jnp.any(jnp.abs(proposal) > MAX_COEFFICIENT, axis=0) & active
        move = active & ~blown
        beta = jnp.where(move, proposal, beta)
        new_dev = deviance(floored_mean(beta))
        settled = jnp.abs(new_dev - dev) / (jnp.abs(new_dev) + 0.1) <= tolerance
        dev = jnp.where(move, new_dev, dev)
        return beta, dev, move & ~settled, diverged | blown, iteration + 1

    def running(state):
        return jnp.any(state[2]) & (state[4] < max_iterations)

    start = jnp.linalg.pinv(x) @ jnp.log(y / s[:, None] + 0.1)
    n_genes = counts.shape[1]
    state = (
        start,
        jnp.full(n_genes, 1000.0, counts.dtype),
        jnp.ones(n_genes, bool),
        jnp.zeros(n_genes, bool),
        0,
    )
    beta, _, active, diverged, _ = jax.lax.while_loop(running, step, state)
    beta = with_implicit_gradient(_coefficient_tangent, beta, *params)

    mu = floored_mean(jax.lax.stop_gradient(beta))
    w = mu / (1.0 + alpha * mu)
    leverage = w * row_quadratic_forms(x, spd_inverse(weighted_gram(x, w) + ridge))
    means = size_factors[:, None] * jnp.exp(design @ beta)
    return CoefficientFit(beta.T, means, leverage, ~active & ~diverged)


def _score(beta, counts, size_factors, design, dispersions):
    """Gradient in ``beta`` (coefficients x genes) of the ridge-penalised log-likelihood."""
    mu = size_factors[:, None] * jnp.exp(design @ beta)
    return design.T @ ((counts - mu) / (1.0 + dispersions * mu)) - RIDGE * beta


def _coefficient_tangent(beta, params, tangents):
    """``d beta = H^-1 d(score)``, ``H`` the observed information (implicit function)."""
    counts, size_factors, design, dispersions = params
    _, score_tangent = jax.jvp(lambda *p: _score(beta, *p), tuple(params), tuple(tangents))
    mu = size_factors[:, None] * jnp.exp(design @ beta)
    curvature = mu * (1.0 + dispersions * counts) / (1.0 + dispersions * mu) ** 2
    ridge = RIDGE * jnp.eye(design.shape[1], dtype=beta.dtype)[:, :, None]
    return spd_solve(weighted_gram(design, curvature) + ridge, score_tangent)
