"""The negative binomial in DESeq2's mean-dispersion form.

``Y ~ NB(mu, alpha)`` has mean ``mu`` and variance ``mu + alpha * mu**2``; ``alpha`` is the
dispersion (the NB size, often called ``theta`` or ``r``, is ``1 / alpha``):

    log p(y) = lgamma(y + 1/alpha) - lgamma(1/alpha) - lgamma(y + 1)
               - (1/alpha) log(1 + alpha mu) + y log(alpha mu / (1 + alpha mu))
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, Float

SHIFT = 10  # recurrence steps before the asymptotic series (its error is then below 1e-13)


def nb_log_prob(
    counts: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    dispersion: Float[Array, "*#shape"],
) -> Float[Array, "*shape"]:
    """Elementwise ``log p(counts)`` under ``NB(mean, dispersion)`` (module docstring)."""
    size = 1.0 / dispersion
    log1p_am = jnp.log1p(dispersion * mean)
    return (
        gammaln(counts + size)
        - gammaln(size)
        - gammaln(counts + 1.0)
        - size * log1p_am
        + xlogy(counts, dispersion * mean)
        - counts * log1p_am
    )


def _digamma_tail(z: Array) -> Array:
    """``psi(z) - log(z)`` by its asymptotic series (z >= SHIFT)."""
    inverse_square = 1.0 / z**2
    series = inverse_square * (
        1 / 12
        - inverse_square
        * (1 / 120 - inverse_square * (1 / 252 - inverse_square * (1 / 240 - inverse_square / 132)))
    )
    return -0.5 / z - series


def _trigamma_tail(z: Array) -> Array:
    """``psi_1(z) - 1/z`` by its asymptotic series (z >= SHIFT)."""
    inverse_square = 1.0 / z**2
    series = inverse_square * (
        1 / 6
        - inverse_square
        * (1 / 30 - inverse_square * (1 / 42 - inverse_square * (1 / 30 - inverse_square * 5 / 66)))
    )
    return 0.5 * inverse_square + series / z


def digamma_difference(
    counts: Float[Array, "*shape"], size: Float[Array, "*#shape"]
) -> Float[Array, "*shape"]:
    """``psi(y + r) - psi(r)`` for ``y >= 0, r > 0``, accurate also when ``r >> y``.

    With ``z = r + SHIFT``, the recurrence ``psi(x) = psi(x + 1) - 1/x`` and the asymptotic
    series give ``sum_i y / ((r + i)(y + r + i)) + log1p(y / z) + tail(z + y) - tail(z)``:
    no term is a difference of two large numbers.
    """
    total = jnp.log1p(counts / (size + SHIFT))
    total += _digamma_tail(size + SHIFT + counts) - _digamma_tail(size + SHIFT)
    for i in range(SHIFT):
        total += counts / ((size + i) * (counts + size + i))
    return total


def trigamma_difference(
    counts: Float[Array, "*shape"], size: Float[Array, "*#shape"]
) -> Float[Array, "*shape"]:
    """``psi_1(y + r) - psi_1(r)`` for ``y >= 0, r > 0``, accurate also when ``r >> y``
    (``1/a^2 - 1/b^2`` is formed as ``(b - a)(b + a) / (a b)^2``)."""
    near, far = size + SHIFT, size + SHIFT + counts
    total = -counts / (near * far) + _trigamma_tail(far) - _trigamma_tail(near)
    for i in range(SHIFT):
        a, b = counts + size + i, size + i
        total -= counts * (a + b) / (a * b) ** 2
    return total
