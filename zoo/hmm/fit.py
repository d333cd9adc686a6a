"""Fitting a `DifferentiableHMM` to a batch of sequences: Baum-Welch EM or gradient descent.

Both take observations of shape (batch, T) with an optional mask of the same shape (True
at real steps; right-pad shorter sequences) and return a `HMMFit`: the new model and the
per-iteration objective. Parameters whose ``learn_*`` flag is off are left bit-identical.

The E-step uses the identity that the expected number of times a parameter ``theta`` is
used given the data is ``theta * d log p(o) / d theta`` (Eisner, 2016, "Inside-outside and
forward-backward algorithms are just backprop"), so the expected counts are one reverse
pass through the same scaled forward recursion that computes the likelihood.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int
from tqdm.auto import tqdm

from zoo.hmm import inference as hmm_inference
from zoo.hmm.model import DifferentiableHMM, check_observations, probability_logits

Batch = Int[Array | np.ndarray, "batch seq_len"]
BatchMask = Bool[Array | np.ndarray, "batch seq_len"] | None


class ExpectedCounts(NamedTuple):
    """Posterior expected counts summed over a batch, and its total log-likelihood."""

    initial: Float[Array, " states"]
    transition: Float[Array, "states states"]
    emission: Float[Array, "states symbols"]
    log_likelihood: Float[Array, ""]


class HMMFit(NamedTuple):
    """The fitted model and the objective at each iteration (before its update): the
    total log-likelihood for Baum-Welch, the loss for gradient fitting."""

    model: DifferentiableHMM
    history: np.ndarray


def _batch(model: DifferentiableHMM, obs: Batch, mask: BatchMask) -> tuple[Array, Array]:
    """Validate a batch eagerly and return ``(obs, mask)`` as JAX arrays, padding zeroed."""
    if np.ndim(obs) != 2:
        raise ValueError(f"obs must have shape (batch, T), got {np.shape(obs)}")
    if np.size(obs) == 0:
        raise ValueError(f"obs holds no observations (shape {np.shape(obs)})")
    check_observations(
        np.asarray(obs), None if mask is None else np.asarray(mask), model.config.n_symbols
    )
    mask = np.ones(np.shape(obs), bool) if mask is None else np.asarray(mask, bool)
    return jnp.asarray(np.where(mask, obs, 0), jnp.int32), jnp.asarray(mask)


@eqx.filter_jit
def expected_counts(
    model: DifferentiableHMM, obs: Int[Array, "batch seq_len"], mask: Bool[Array, "batch seq_len"]
) -> ExpectedCounts:
    """The E-step: expected initial-state, transition and emission counts given the data,
    ``theta * d log p(o) / d theta`` for each probability ``theta`` (module docstring)."""
    probabilities = jax.lax.stop_gradient(model.probabilities())

    def total_log_likelihood(params):
        pi, a, b = params

        def one(o, m):
            return hmm_inference.forward(pi, a, b.T, o, m)[0]

        return jax.vmap(one)(obs, mask).sum()

    log_likelihood, grads = jax.value_and_grad(total_log_likelihood)(probabilities)
    counts = [p * g for p, g in zip(probabilities, grads, strict=True)]
    return ExpectedCounts(*counts, log_likelihood)


def _normalise_rows(counts: Array, old: Array) -> Array:
    """Rows of `counts` scaled to sum 1; a row with no counts keeps its old probabilities."""
    totals = counts.sum(axis=-1, keepdims=True)
    return jnp.where(totals > 0, counts / jnp.where(totals > 0, totals, 1.0), old)


@eqx.filter_jit
def baum_welch_step(
    model: DifferentiableHMM, obs: Int[Array, "batch seq_len"], mask: Bool[Array, "batch seq_len"]
) -> tuple[DifferentiableHMM, Float[Array, ""]]:
    """One EM iteration (Baum et al., 1970): the maximum-likelihood parameters given the
    expected counts, for the learnable parameters only. Returns the new model and the
    log-likelihood under the old one."""
    counts = expected_counts(model, obs, mask)
    new_logits = tuple(
        probability_logits(_normalise_rows(count, old)) if learn else frozen
        for learn, count, old, frozen in zip(
            model.config.learnable, counts[:3], model.probabilities(), model.logits(), strict=True
        )
    )
    new = eqx.tree_at(lambda m: m.logits(), model, new_logits)
    return new, counts.log_likelihood


def fit_hmm_baum_welch(
    model: DifferentiableHMM,
    obs: Batch,
    mask: BatchMask = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-2,
    progress: bool = False,
) -> HMMFit:
    """Baum-Welch EM until the total log-likelihood improves by less than `tol` (as
    hmmlearn's ``tol``) or `max_iter` iterations.

    Args:
        model: the starting point (EM cannot leave a symmetric start: see
            `DifferentiableHMM.__init__`).
        obs: symbols, shape (batch, T).
        mask: True at real steps, shape (batch, T); default all real.
        max_iter: most iterations.
        tol: convergence threshold on the log-likelihood gain per iteration.
        progress: show a tqdm bar.
    """
    obs, mask = _batch(model, obs, mask)
    history = []
    for _ in tqdm(range(max_iter), disable=not progress, desc="Baum-Welch"):
        model, log_likelihood = baum_welch_step(model, obs, mask)
        history.append(float(log_likelihood))
        if len(history) > 1 and history[-1] - history[-2] < tol:
            break
    return HMMFit(model, np.asarray(history))


def fit_hmm_gradient(
    model: DifferentiableHMM,
    obs: Batch,
    mask: BatchMask = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 200,
    progress: bool = False,
) -> HMMFit:
    """Full-batch gradient descent on the mean negative log-likelihood per observed symbol.

    Only the learnable logits (`DifferentiableHMM.trainable`) are given to the optimiser,
    so frozen ones stay bit-identical even under weight decay.

    Args:
        optimizer: an optax transformation; default ``optax.adam(0.05)``.
        steps: gradient steps.
        (others as in `fit_hmm_baum_welch`.)
    """
    obs, mask = _batch(model, obs, mask)
    optimizer = optax.adam(0.05) if optimizer is None else optimizer
    params, static = eqx.partition(model, model.trainable())
    n_observed = mask.sum()

    def loss_fn(params):
        hmm = eqx.combine(params, static)
        return -jax.vmap(hmm.log_likelihood)(obs, mask).sum() / n_observed

    @eqx.filter_jit
    def step(params, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, loss

    state = optimizer.init(eqx.filter(params, eqx.is_array))
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc="gradient fit"):
        params, state, loss = step(params, state)
        history.append(float(loss))
    return HMMFit(eqx.combine(params, static), np.asarray(history))
