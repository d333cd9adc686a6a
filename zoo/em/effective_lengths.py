"""Effective transcript lengths from a fragment-length distribution, as kallisto 0.48 has them.

A fragment of length ``f`` can start at ``L - f + 1`` places of a transcript of length ``L``,
so the number of places a fragment from that transcript can come from is ``L - E[f | f <= L]
+ 1`` on average over the fragments that fit (Pachter, arXiv:1104.3889, 2011, section 1.1).
kallisto 0.48 (``src/weights.cpp``, ``src/MinCollector.cpp``) evaluates this with fragment
lengths ``0 .. 999`` (its ``MAX_FRAG_LEN`` is 1000) through the truncated means

    m(i) = sum_{f <= i} f p(f) / sum_{f <= i} p(f),   or 0 where no length up to i has mass,

    l_eff = L - m(min(L, 999)) + 1,   replaced by L where it is below 1,

where ``p`` is either a normal density at the whole lengths ``0 .. 999`` (a mean and a
standard deviation given, as ``kallisto quant -l MEAN -s SD``), or the histogram of observed
fragment lengths (kallisto's own estimate from paired reads: the first 10,000 pairs that
pseudoalign to one transcript, with lengths in ``1 .. 999``; see
`zoo.em.kallisto_io.read_fragment_lengths`). Because ``m(i) <= i``, ``l_eff >= 1`` whenever
some fragment fits; a transcript shorter than every observed fragment gets ``m = 0`` and so
``l_eff = L + 1``, as in kallisto. kallisto's mean fragment length is ``m(999)``.

Written here rather than taken from a library because no kept library implements kallisto's
discretised, truncated form, and the normal case is written in JAX (in logs, so no density
underflows in float32) so that gradients reach the mean and the standard deviation. Where the
unnormalised density ``exp(-z**2 / 2)`` underflows in float64 (lengths more than 38 standard
deviations below the mean) kallisto's ``m`` is 0 and ours is the exact truncated mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

MAX_FRAGMENT_LENGTH = 1000  # kallisto's MAX_FRAG_LEN: fragment lengths are 0 .. 999


class FragmentLengths(eqx.Module):
    """A fragment-length distribution over the lengths ``0 .. 999``, kept as the truncated means
    ``m(i)`` of the module doc (all that effective lengths need).

    Build with `FragmentLengths.truncated_normal` or `FragmentLengths.from_observed`.

    Attributes:
        truncated_means: ``m(i)``, the mean fragment length among lengths up to ``i``.
    """

    truncated_means: Float[Array, "1000"]

    @classmethod
    def truncated_normal(cls, mean: ArrayLike, sd: ArrayLike) -> FragmentLengths:
        """A normal distribution with this `mean` and standard deviation `sd`, at the whole
        lengths ``0 .. 999`` (kallisto's ``-l`` and ``-s``); differentiable in both.

        Raises:
            ValueError: if `mean` or `sd` is concrete and not positive and finite.
        """
        for name, value in (("mean", mean), ("sd", sd)):
            if not isinstance(value, jax.core.Tracer):
                value = float(np.asarray(value))
                if not (np.isfinite(value) and value > 0):
                    raise ValueError(f"{name} must be positive and finite, got {value:g}")
        lengths = jnp.arange(MAX_FRAGMENT_LENGTH, dtype=jnp.result_type(float))
        log_density = -0.5 * ((lengths - mean) / sd) ** 2
        log_mass = jax.lax.cumlogsumexp(log_density)
        # Lengths from 1 on: the length-0 term adds nothing to the numerator.
        log_moment = jax.lax.cumlogsumexp(log_density[1:] + jnp.log(lengths[1:]))
        means = jnp.exp(log_moment - log_mass[1:])
        return cls(jnp.concatenate([jnp.zeros(1, means.dtype), means]))

    @classmethod
    def from_observed(cls, lengths: Sequence[int] | np.ndarray) -> FragmentLengths:
        """The histogram of observed fragment `lengths` (whole numbers in ``1 .. 999``), e.g.
        from `zoo.em.kallisto_io.read_fragment_lengths`.

        Raises:
            ValueError: if there are no lengths, or one is not a whole number in ``1 .. 999``.
        """
        lengths = np.asarray(lengths, dtype=np.float64).ravel()
        if lengths.size == 0:
            raise ValueError("lengths is empty: no fragment lengths were observed")
        bad = (lengths != np.round(lengths)) | (lengths < 1) | (lengths >= MAX_FRAGMENT_LENGTH)
        if np.any(bad):
            raise ValueError(
                f"lengths must be whole numbers in 1 .. {MAX_FRAGMENT_LENGTH - 1}; "
                f"fragment {int(np.argmax(bad))} has {lengths[bad][0]:g}"
            )
        histogram = np.bincount(lengths.astype(np.int64), minlength=MAX_FRAGMENT_LENGTH)
        support = np.arange(MAX_FRAGMENT_LENGTH)
        counts = np.cumsum(histogram)
        mass = np.cumsum(histogram * support)
        means = np.divide(mass, counts, out=np.zeros(MAX_FRAGMENT_LENGTH), where=counts > 0)
        return cls(jnp.asarray(means, dtype=jnp.result_type(float)))

    @property
    def mean(self) -> Float[Array, ""]:
        """The mean fragment length, ``m(999)`` (what kallisto reports as the average)."""
        return self.truncated_means[-1]


def effective_lengths(
    transcript_lengths: Sequence[int] | np.ndarray | Array, fragments: FragmentLengths
) -> Float[Array, " n_transcripts"]:
    """kallisto 0.48's effective lengths ``L - m(min(L, 999)) + 1`` (``L`` where that is below
    1; see module doc), for use as `DifferentiableEMQuantifier.with_effective_lengths`.

    Args:
        transcript_lengths: each transcript's length in bases (whole numbers >= 1), e.g. the
            lengths of the sequences of the transcript FASTA.
        fragments: the library's fragment-length distribution.

    Returns:
        One effective length per transcript; differentiable in ``fragments``.

    Raises:
        ValueError: if `transcript_lengths` is empty, not one-dimensional, or holds a value
            that is not a whole number >= 1.
    """
    lengths = np.asarray(transcript_lengths, dtype=np.float64)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(
            f"transcript_lengths must be a non-empty list of lengths, got shape {lengths.shape}"
        )
    bad = (lengths != np.round(lengths)) | (lengths < 1)
    if np.any(bad):
        raise ValueError(
            f"transcript_lengths must be whole numbers >= 1; transcript {int(np.argmax(bad))} "
            f"has {lengths[bad][0]:g}"
        )
    means = fragments.truncated_means[np.minimum(lengths, MAX_FRAGMENT_LENGTH - 1).astype(int)]
    lengths = jnp.asarray(lengths, means.dtype)
    shortened = lengths - means + 1.0
    return jnp.where(shortened < 1.0, lengths, shortened)
