"""Exact log-probabilities of count distributions used by single-cell models.

Every function is elementwise over arrays of any (broadcastable) shape. Each
log-probability is split as ``log p(x) = kernel(x) + coefficient(x)``: the `*_log_prob`
functions return the full value, normalising constants included (comparable with
`scipy.stats`); the coefficient holds every ``lgamma`` term and is exactly 0 at ``x = 0``, so
a sum over a sparse count vector needs it only at the non-zero counts
(`log_count_coefficient`), while the `*_log_kernel` functions give the rest.

- Poisson with rate ``mu``: kernel ``x log mu - mu``, coefficient ``-lgamma(x + 1)``.
- Negative binomial with mean ``mu`` and inverse dispersion ``theta`` (variance
  ``mu + mu^2 / theta``; scipy's ``nbinom(n=theta, p=theta / (theta + mu))``): kernel
  ``theta log(theta / (theta + mu)) + x log(mu / (theta + mu))``, coefficient
  ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``.
- Zero-inflated negative binomial (Lopez et al., 2018, "Deep generative modeling for
  single-cell transcriptomics", Nature Methods): with probability ``pi = sigmoid(logits)`` a
  structural zero, otherwise a negative binomial draw::

      x = 0:  log(pi + (1 - pi) NB(0))
      x > 0:  log(1 - pi) + log NB(x)

  The branch is chosen by the exact test ``x == 0``; every term is computed in log space
  (``log sigmoid`` and ``logaddexp``) so no probability underflows. Its coefficient is the
  negative binomial's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, Float


def log_count_coefficient(
    x: Float[Array, "*shape"], inverse_dispersion: Float[Array, "*shape"] | None = None
) -> Float[Array, "*shape"]:
    """The ``lgamma`` terms: ``-lgamma(x + 1)`` (Poisson, `inverse_dispersion` None) or
    ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` (NB, ZINB); 0 at ``x = 0``."""
    log_factorial = jnp.where(x == 0, 0.0, gammaln(x + 1.0))  # exact 0 (XLA's lgamma(1) is not)
    if inverse_dispersion is None:
        return -log_factorial
    theta = inverse_dispersion
    return gammaln(x + theta) - gammaln(theta) - log_factorial


def poisson_log_kernel(
    x: Float[Array, "*shape"], rate: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """``x log rate - rate``."""
    return xlogy(x, rate) - rate


def negative_binomial_log_kernel(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    inverse_dispersion: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """``theta log(theta / (theta + mean)) + x log(mean / (theta + mean))``, computed as
    ``-(theta + x) log1p(mean / theta) + x log(mean / theta)``: accurate also for the
    large ``theta`` (dispersion ``1 / theta`` near 0) of nearly Poisson genes."""
    theta = inverse_dispersion
    log1p_ratio = jnp.log1p(mean / theta)
    return xlogy(x, mean / theta) - (theta + x) * log1p_ratio


def zinb_log_kernel(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    inverse_dispersion: Float[Array, "*shape"],
    zero_logits: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """The ZINB log-probability less the NB coefficient (exact test ``x == 0``)."""
    log_pi = jax.nn.log_sigmoid(zero_logits)
    log_one_minus_pi = log_pi - zero_logits  # log(1 - sigmoid(z)) = log(sigmoid(z)) - z
    nb = negative_binomial_log_kernel(x, mean, inverse_dispersion)
    return jnp.where(x == 0, jnp.logaddexp(log_pi, log_one_minus_pi + nb), log_one_minus_pi + nb)


def poisson_log_prob(
    x: Float[Array, "*shape"], rate: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """``log Poisson(x | rate)``; `rate` must be positive."""
    return poisson_log_kernel(x, rate) + log_count_coefficient(x)


def negative_binomial_log_prob(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    inverse_dispersion: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """``log NB(x | mean, theta)`` with ``theta = inverse_dispersion``."""
    return negative_binomial_log_kernel(x, mean, inverse_dispersion) + log_count_coefficient(
        x, inverse_dispersion
    )


def zinb_log_prob(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    inverse_dispersion: Float[Array, "*shape"],
    zero_logits: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """``log ZINB(x | mean, theta, pi)`` with ``pi = sigmoid(zero_logits)`` the probability
    of a structural zero."""
    return zinb_log_kernel(x, mean, inverse_dispersion, zero_logits) + log_count_coefficient(
        x, inverse_dispersion
    )
