"""`DifferentiableHMM`: a hidden Markov model with categorical emissions (Rabiner, 1989).

The model has ``K = n_states`` hidden states and ``M = n_symbols`` observed symbols::

    p(o, s) = pi[s_0] * b[s_0, o_0] * prod_{t>0} A[s_{t-1}, s_t] * b[s_t, o_t]

with ``pi = softmax(initial_logits)``, ``A = softmax(transition_logits, rows)`` and
``b = softmax(emission_logits, rows)``. Storing unconstrained logits lets any optimiser
move the parameters without leaving the simplex. A parameter whose ``learn_*`` flag is off
is wrapped in `jax.lax.stop_gradient` wherever it is read, so no gradient reaches it even
inside a larger model, and `trainable` gives the filter that keeps optimisers off it.

Every method handles ONE sequence ``obs`` of shape (T,) with an optional ``mask`` (True at
real steps; masked steps are skipped, so padding changes nothing); batch with `jax.vmap`.
The recursions are in `zoo.hmm.inference`; fitting (Baum-Welch and gradient) is in
`zoo.hmm.fit`.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from zoo.common.config import Config, require_positive
from zoo.hmm import inference as hmm_inference

Observations = Int[Array | np.ndarray, " seq_len"]
Mask = Bool[Array | np.ndarray, " seq_len"] | None

_SUM_TOLERANCE = 1e-4  # how far a row of `from_probabilities` may sum from 1 (float32 input)
_LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))  # logit of a zero probability


@dataclasses.dataclass(frozen=True)
class DifferentiableHMMConfig(Config):
    """Shape and learnability of a `DifferentiableHMM`.

    Attributes:
        n_states: hidden states K.
        n_symbols: observed symbols M (an observation is an integer in [0, M)).
        temperature: smoothing of `DifferentiableHMM.soft_viterbi` (its default), > 0;
            towards 0 it approaches the hard Viterbi path, at 1 it equals the posteriors.
        learn_initial: whether the initial distribution is trained.
        learn_transition: whether the transition matrix is trained.
        learn_emission: whether the emission matrix is trained.
    """

    n_states: int = 2
    n_symbols: int = 4
    temperature: float = 0.1
    learn_initial: bool = True
    learn_transition: bool = True
    learn_emission: bool = True

    def validate(self) -> None:
        require_positive(
            n_states=self.n_states, n_symbols=self.n_symbols, temperature=self.temperature
        )

    @property
    def learnable(self) -> tuple[bool, bool, bool]:
        """The ``learn_*`` flags in the order of `DifferentiableHMM.logits`."""
        return self.learn_initial, self.learn_transition, self.learn_emission


def check_observations(obs: np.ndarray, mask: np.ndarray | None, n_symbols: int) -> None:
    """Raise `ValueError` unless the integer array `obs` (any shape) holds symbols in
    ``[0, n_symbols)`` at every position where `mask` (same shape, or None) is True; the
    message names the first offending symbol and its position."""
    obs = np.asarray(obs)
    if not np.issubdtype(obs.dtype, np.integer):
        raise ValueError(f"observations must be integer symbols, got dtype {obs.dtype}")
    if mask is not None and np.shape(mask) != obs.shape:
        raise ValueError(f"mask has shape {np.shape(mask)}, observations have {obs.shape}")
    bad = (obs < 0) | (obs >= n_symbols)
    if mask is not None:
        bad &= np.asarray(mask, bool)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"observation {int(obs[where])} at position {where} is outside the symbols "
            f"[0, {n_symbols})"
        )


def _check_distribution(name: str, probs: np.ndarray) -> None:
    """Raise `ValueError` unless every row (last axis) of `probs` is a distribution."""
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(probs < 0):
        raise ValueError(f"{name} contains negative probabilities")
    sums = probs.sum(axis=-1)
    worst = np.max(np.abs(sums - 1.0))
    if worst > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} must sum to 1 along its last axis; a row sums to "
            f"{sums.flat[np.argmax(np.abs(sums - 1.0))]:.6g}"
        )


def probability_logits(probs: np.ndarray | Array) -> Float[Array, "*shape"]:
    """``log(probs)`` as float32 logits, with a zero probability at the float32 floor
    ``log(tiny) ≈ -87.3`` instead of ``-inf`` so that sums and gradients stay finite."""
    return jnp.maximum(jnp.log(jnp.asarray(probs, jnp.float32)), _LOG_FLOOR)


class DifferentiableHMM(eqx.Module):
    """Categorical hidden Markov model (see the module docstring)."""

    initial_logits: Float[Array, " states"]
    transition_logits: Float[Array, "states states"]
    emission_logits: Float[Array, "states symbols"]
    config: DifferentiableHMMConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiableHMMConfig, *, key: PRNGKeyArray):
        """Random logits, standard normal, so that fitting starts from a non-symmetric
        point (equal states would stay equal under Baum-Welch)."""
        k_init, k_trans, k_emit = jax.random.split(key, 3)
        n, m = config.n_states, config.n_symbols
        self.initial_logits = jax.random.normal(k_init, (n,))
        self.transition_logits = jax.random.normal(k_trans, (n, n))
        self.emission_logits = jax.random.normal(k_emit, (n, m))
        self.config = config

    @classmethod
    def from_probabilities(
        cls,
        initial: np.ndarray | Array,
        transition: np.ndarray | Array,
        emission: np.ndarray | Array,
        **config_fields,
    ) -> DifferentiableHMM:
        """The model with these probabilities.

        Args:
            initial: ``pi``, shape (K,).
            transition: ``A``, shape (K, K), rows summing to 1.
            emission: ``b``, shape (K, M), rows summing to 1.
            **config_fields: other `DifferentiableHMMConfig` fields (``temperature``,
                ``learn_*``); K and M come from the shapes.

        Raises:
            ValueError: on mismatched shapes, NaN or infinite values, negative entries, or
                rows that do not sum to 1 (within 1e-4).
        """
        initial, transition, emission = (
            np.asarray(x, np.float64) for x in (initial, transition, emission)
        )
        if initial.ndim != 1:
            raise ValueError(f"initial must have shape (K,), got {initial.shape}")
        k = initial.shape[0]
        if transition.shape != (k, k):
            raise ValueError(f"transition must have shape ({k}, {k}), got {transition.shape}")
        if emission.ndim != 2 or emission.shape[0] != k:
            raise ValueError(f"emission must have shape ({k}, M), got {emission.shape}")
        for name, probs in (
            ("initial", initial),
            ("transition", transition),
            ("emission", emission),
        ):
            _check_distribution(name, probs)
        config = DifferentiableHMMConfig(n_states=k, n_symbols=emission.shape[1], **config_fields)
        skeleton = eqx.filter_eval_shape(cls, config, key=jax.random.key(0))
        logits = tuple(probability_logits(p) for p in (initial, transition, emission))
        return eqx.tree_at(lambda m: m.logits(), skeleton, logits)

    # Parameters -------------------------------------------------------------------------

    def logits(self) -> tuple:
        """The ``(initial, transition, emission)`` logit fields, as stored (no freezing);
        also the selector that `eqx.tree_at` uses to replace them."""
        return self.initial_logits, self.transition_logits, self.emission_logits

    def _read(self, logits: Array, learnable: bool) -> Array:
        return logits if learnable else jax.lax.stop_gradient(logits)

    def log_initial(self) -> Float[Array, " states"]:
        """``log pi``."""
        return jax.nn.log_softmax(self._read(self.initial_logits, self.config.learn_initial))

    def log_transition(self) -> Float[Array, "states states"]:
        """``log A`` (rows: from-state)."""
        logits = self._read(self.transition_logits, self.config.learn_transition)
        return jax.nn.log_softmax(logits, axis=1)

    def log_emission(self) -> Float[Array, "states symbols"]:
        """``log b`` (rows: state)."""
        logits = self._read(self.emission_logits, self.config.learn_emission)
        return jax.nn.log_softmax(logits, axis=1)

    def probabilities(
        self,
    ) -> tuple[
        Float[Array, " states"], Float[Array, "states states"], Float[Array, "states symbols"]
    ]:
        """``(pi, A, b)``, the inverse of `from_probabilities`."""
        return tuple(
            jnp.exp(x) for x in (self.log_initial(), self.log_transition(), self.log_emission())
        )

    def trainable(self) -> DifferentiableHMM:
        """A filter for `eqx.partition`: True at the learnable logits, False elsewhere."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.logits(), spec, self.config.learnable)

    # Inference --------------------------------------------------------------------------

    def _prepare(
        self, obs: Observations, mask: Mask
    ) -> tuple[Int[Array, " seq_len"], Bool[Array, " seq_len"]]:
        """Validate one sequence: eagerly when the values are known (`ValueError`), with
        `eqx.error_if` under `jax.jit`/`jax.vmap`. Masked entries may hold anything."""
        if jnp.ndim(obs) != 1:
            raise ValueError(
                f"obs must be one sequence of shape (T,), got shape {jnp.shape(obs)}; "
                "batch with jax.vmap"
            )
        traced = any(isinstance(x, jax.core.Tracer) for x in (obs, mask))
        if not traced:
            check_observations(obs, mask, self.config.n_symbols)
        obs = jnp.asarray(obs)
        mask = jnp.ones(obs.shape, bool) if mask is None else jnp.asarray(mask, bool)
        if traced:
            bad = mask & ((obs < 0) | (obs >= self.config.n_symbols))
            obs = eqx.error_if(
                obs, bad.any(), f"observation outside the symbols [0, {self.config.n_symbols})"
            )
        return jnp.where(mask, obs, 0), mask

    def log_likelihood(self, obs: Observations, mask: Mask = None) -> Float[Array, ""]:
        """``log p(o)`` by the forward algorithm, accurate to ~1e-7 relative in float32
        over long sequences (see `zoo.hmm.inference`)."""
        obs, mask = self._prepare(obs, mask)
        pi, a, b = self.probabilities()
        log_likelihood, _ = hmm_inference.forward(pi, a, b.T, obs, mask)
        return log_likelihood

    def __call__(self, obs: Observations, mask: Mask = None) -> Float[Array, ""]:
        """The log-likelihood of one sequence (`log_likelihood`)."""
        return self.log_likelihood(obs, mask)

    def posteriors(self, obs: Observations, mask: Mask = None) -> Float[Array, "seq_len states"]:
        """``gamma[t, k] = p(s_t = k | o)`` by forward-backward; zero rows where masked."""
        obs, mask = self._prepare(obs, mask)
        pi, a, b = self.probabilities()
        _, gamma = hmm_inference.posteriors(pi, a, b.T, obs, mask)
        return gamma

    def viterbi(self, obs: Observations, mask: Mask = None) -> Int[Array, " seq_len"]:
        """The most probable state path ``argmax_s p(s | o)``; ``-1`` where masked."""
        obs, mask = self._prepare(obs, mask)
        return hmm_inference.viterbi(
            self.log_initial(), self.log_transition(), self.log_emission().T, obs, mask
        )

    def soft_viterbi(
        self,
        obs: Observations,
        mask: Mask = None,
        temperature: float | Float[Array, ""] | None = None,
    ) -> Float[Array, "seq_len states"]:
        """A differentiable relaxation of `viterbi` (Mensch & Blondel, 2018).

        The Viterbi recursion with ``max`` replaced by ``tau * logsumexp(. / tau)`` gives a
        smoothed best-path score ``V_tau``; its gradient with respect to the per-step log
        emissions is returned: a (T, K) matrix whose rows sum to 1, the one-hot Viterbi
        path as ``tau -> 0`` and the posteriors at ``tau = 1``. Zero rows where masked.

        Args:
            temperature: ``tau`` > 0; defaults to ``config.temperature``.
        """
        obs, mask = self._prepare(obs, mask)
        tau = self.config.temperature if temperature is None else temperature
        per_step = self.log_emission().T[obs]  # (T, K): row t is step t's emission terms

        def value(table):
            return hmm_inference.smoothed_viterbi_value(
                self.log_initial(),
                self.log_transition(),
                table,
                jnp.arange(obs.shape[0]),
                mask,
                tau,
            )

        return jax.grad(value)(per_step)
