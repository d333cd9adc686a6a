"""The recursions of a discrete hidden Markov model, on arrays (Rabiner, 1989).

Every function here takes one sequence of symbols ``obs`` (T,), an emission table whose
row ``table[o]`` holds ``p(o | s = k)`` over the states k (or its log), and a boolean
``mask``, True at real steps. The row is looked up inside the scan step, which is several
times faster than gathering a (T, K) array up front; a table with one row per step and
``obs = arange(T)`` passes arbitrary per-step terms.

A masked step is *skipped*: the chain neither moves nor emits there, so a right-padded
sequence gives exactly the result of the unpadded one, and its masked rows come out as
zeros (posteriors, marginals) or ``-1`` (Viterbi states). Each recursion is jitted, so it
compiles once per shape.

Accuracy of the likelihood. The forward pass runs in probability space and rescales the
forward vector after every step by a power of two, ``2**-e`` with ``e`` the binary exponent
of its sum. Multiplying by a power of two is exact in floating point, and the exponents are
integers summed exactly, so ``log p(o) = ln 2 * sum(e) + log(sum(alpha_T))`` carries no
accumulated rounding from the rescaling: only the per-step products round, and those
errors do not drift. A float32 log-space scan (or a sum of float32 ``log c_t`` scale
factors) instead accumulates one rounding per step, about 3e-5 relative after 10,000 steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

_MANTISSA_BITS = 23  # float32
_EXPONENT_BIAS = 127


def first_steps(mask: Bool[Array, " seq_len"]) -> Bool[Array, " seq_len"]:
    """True at the first real step only (where the chain starts from the initial law)."""
    return mask & (jnp.cumsum(mask) == 1)


def _binary_exponent(x: Float[Array, "*batch"]) -> Int[Array, "*batch"]:
    """``floor(log2(x))`` of positive float32 normals, read from the bits (exact)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return ((bits >> _MANTISSA_BITS) & 0xFF) - _EXPONENT_BIAS


def _power_of_two(e: Int[Array, "*batch"]) -> Float[Array, "*batch"]:
    """``2.0**e`` as float32 for integer ``e`` in [-126, 127], built from the bits (exact)."""
    return jax.lax.bitcast_convert_type((e + _EXPONENT_BIAS) << _MANTISSA_BITS, jnp.float32)


@jax.jit
def forward(
    initial: Float[Array, " states"],
    transition: Float[Array, "states states"],
    emission_table: Float[Array, "symbols states"],
    obs: Int[Array, " seq_len"],
    mask: Bool[Array, " seq_len"],
) -> tuple[Float[Array, ""], Float[Array, "seq_len states"]]:
    """The forward algorithm with exact power-of-two rescaling (module docstring).

    Args:
        initial: ``pi[k] = p(s_0 = k)``.
        transition: ``A[i, j] = p(s_{t+1} = j | s_t = i)``.
        emission_table: ``table[o, k] = p(o | s = k)``.
        obs: the symbols, each a row index of ``emission_table``.
        mask: True at real steps.

    Returns:
        ``(log p(o), alpha)``: the log-likelihood and the forward vectors
        ``alpha[t, k] ∝ p(o_{<=t}, s_t = k)``, each rescaled by a power of two (rows are
        not normalised; masked rows repeat the previous one).
    """

    def step(carry, inputs):
        alpha, exponent = carry
        symbol, is_first, is_real = inputs
        predicted = jnp.where(is_first, initial, alpha @ transition)
        joint = predicted * emission_table[symbol]
        e = jax.lax.stop_gradient(_binary_exponent(joint.sum()))
        joint = joint * _power_of_two(-e)
        alpha = jnp.where(is_real, joint, alpha)
        return (alpha, exponent + jnp.where(is_real, e, 0)), alpha

    start = (initial, jnp.zeros((), jnp.int32))
    (alpha, exponent), alphas = jax.lax.scan(step, start, (obs, first_steps(mask), mask))
    log_likelihood = exponent.astype(jnp.float32) * jnp.log(2.0) + jnp.log(alpha.sum())
    return log_likelihood, alphas


@jax.jit
def backward(
    transition: Float[Array, "states states"],
    emission_table: Float[Array, "symbols states"],
    obs: Int[Array, " seq_len"],
    mask: Bool[Array, " seq_len"],
) -> Float[Array, "seq_len states"]:
    """The backward vectors ``beta[t, k] ∝ p(o_{>t} | s_t = k)``, each rescaled by a power
    of two so that it neither underflows nor overflows (arguments as in `forward`)."""

    def step(beta, inputs):
        symbol, is_real = inputs
        previous = transition @ (emission_table[symbol] * beta)
        previous = previous * _power_of_two(-_binary_exponent(previous.sum()))
        return jnp.where(is_real, previous, beta), beta

    ones = jnp.ones(transition.shape[0], emission_table.dtype)
    _, betas = jax.lax.scan(step, ones, (obs, mask), reverse=True)
    return betas


@jax.jit
def posteriors(
    initial: Float[Array, " states"],
    transition: Float[Array, "states states"],
    emission_table: Float[Array, "symbols states"],
    obs: Int[Array, " seq_len"],
    mask: Bool[Array, " seq_len"],
) -> tuple[Float[Array, ""], Float[Array, "seq_len states"]]:
    """Forward-backward: ``(log p(o), gamma)`` with ``gamma[t, k] = p(s_t = k | o)``, zero
    rows at masked steps. Each row is normalised on its own, so the rescaling of alpha and
    beta cancels."""
    log_likelihood, alphas = forward(initial, transition, emission_table, obs, mask)
    gamma = alphas * backward(transition, emission_table, obs, mask)
    gamma = gamma / gamma.sum(axis=1, keepdims=True)
    return log_likelihood, jnp.where(mask[:, None], gamma, 0.0)


@jax.jit
def viterbi(
    log_initial: Float[Array, " states"],
    log_transition: Float[Array, "states states"],
    log_emission_table: Float[Array, "symbols states"],
    obs: Int[Array, " seq_len"],
    mask: Bool[Array, " seq_len"],
) -> Int[Array, " seq_len"]:
    """The most probable state path (Viterbi, 1967) by max-product with back-pointers;
    ``-1`` at masked steps.

    The running scores are shifted by their maximum after every step. The path depends
    only on score differences, which stay small, so they keep float32's full relative
    precision instead of the ~1e-3 absolute resolution of a score of -20,000 (which
    picks a visibly worse path on 10 kb of DNA).
    """
    n_states = log_transition.shape[0]
    identity = jnp.arange(n_states)

    def step(score, inputs):
        symbol, is_first, is_real = inputs
        candidates = score[:, None] + log_transition
        best = jnp.where(is_first, log_initial, candidates.max(axis=0))
        pointer = jnp.where(is_first | ~is_real, identity, candidates.argmax(axis=0))
        best = best + log_emission_table[symbol]
        return jnp.where(is_real, best - best.max(), score), pointer

    start = jnp.zeros(n_states, log_emission_table.dtype)
    score, pointers = jax.lax.scan(step, start, (obs, first_steps(mask), mask))

    def trace_back(state, pointer):
        return pointer[state], state

    _, path = jax.lax.scan(trace_back, score.argmax(), pointers, reverse=True)
    return jnp.where(mask, path, -1)


@jax.jit
def smoothed_viterbi_value(
    log_initial: Float[Array, " states"],
    log_transition: Float[Array, "states states"],
    log_emission_table: Float[Array, "symbols states"],
    obs: Int[Array, " seq_len"],
    mask: Bool[Array, " seq_len"],
    temperature: float | Float[Array, ""],
) -> Float[Array, ""]:
    """The Viterbi score with every max replaced by ``tau * logsumexp(. / tau)`` (Mensch &
    Blondel, 2018). ``tau -> 0`` gives the best path's log-probability; ``tau = 1`` gives
    ``log p(o)``. Its gradient with respect to a per-step table (``obs = arange(T)``) is a
    (T, K) matrix of soft state indicators (see `zoo.DifferentiableHMM.soft_viterbi`).

    As in `viterbi`, the running scores are shifted by their maximum after every step so
    that their differences, which the gradient depends on, keep full precision; the shifts
    are constants to the gradient and are added back to the value only.
    """

    def smooth_max(x, axis=None):
        return temperature * jax.nn.logsumexp(x / temperature, axis=axis)

    def step(carry, inputs):
        score, shifts = carry
        symbol, is_first, is_real = inputs
        best = jnp.where(is_first, log_initial, smooth_max(score[:, None] + log_transition, axis=0))
        best = best + log_emission_table[symbol]
        shift = jax.lax.stop_gradient(best.max())
        score = jnp.where(is_real, best - shift, score)
        return (score, shifts + jnp.where(is_real, shift, 0.0)), None

    start = (jnp.zeros(log_transition.shape[0], log_emission_table.dtype), jnp.zeros(()))
    (score, shifts), _ = jax.lax.scan(step, start, (obs, first_steps(mask), mask))
    return jnp.where(mask.any(), shifts + smooth_max(score), 0.0)
