"""Digamma and trigamma differences for the negative binomial's dispersion derivatives.

``Y ~ NB(mu, alpha)`` (DESeq2's form) has mean ``mu`` and variance ``mu + alpha * mu**2``;
the NB size ``r = 1 / alpha``. Its log-probability is
`zoo.common.likelihoods.negative_binomial_log_prob` with ``inverse_dispersion = r``; the
derivatives in ``alpha`` need ``psi(y + r) - psi(r)`` and ``psi_1(y + r) - psi_1(r)``, which
this module computes without cancellation when ``r >> y``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

SHIFT = 10  # recurrence steps before the asymptotic series (its error is then below 1e-13)


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
