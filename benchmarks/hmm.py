"""Log-likelihood of 256 sequences x 10,000 steps (K = 8 states, M = 4 symbols):
`zoo.DifferentiableHMM` against hmmlearn's CategoricalHMM (float64, the reference values)
and dynamax's ``hmm_filter`` (float32), same data, same run.

Each JAX function is compiled and run once before timing (compile time reported apart);
every timing is the best of `REPEATS` runs. The last line printed is a JSON object.
"""

from __future__ import annotations

import json
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from dynamax.hidden_markov_model import hmm_filter
from hmmlearn.hmm import CategoricalHMM

from zoo import DifferentiableHMM

N_SEQUENCES, LENGTH, N_STATES, N_SYMBOLS = 256, 10_000, 8, 4
REPEATS = 5


def random_hmm(rng: np.random.Generator) -> CategoricalHMM:
    """An hmmlearn model with Dirichlet(1) random parameters."""
    hmm = CategoricalHMM(N_STATES, n_features=N_SYMBOLS)
    hmm.startprob_ = rng.dirichlet(np.ones(N_STATES))
    hmm.transmat_ = rng.dirichlet(np.ones(N_STATES), size=N_STATES)
    hmm.emissionprob_ = rng.dirichlet(np.ones(N_SYMBOLS), size=N_STATES)
    return hmm


def sample(hmm: CategoricalHMM, rng: np.random.Generator) -> np.ndarray:
    """`N_SEQUENCES` observation sequences of `LENGTH` steps drawn from `hmm`, all sequences
    advanced together (hmmlearn's own sampler loops over steps in Python)."""

    def draw(cumulative: np.ndarray) -> np.ndarray:  # one categorical draw per row
        return (cumulative < rng.random((len(cumulative), 1))).sum(axis=1)

    states = draw(np.tile(np.cumsum(hmm.startprob_), (N_SEQUENCES, 1)))
    emission, transition = np.cumsum(hmm.emissionprob_, 1), np.cumsum(hmm.transmat_, 1)
    obs = np.empty((N_SEQUENCES, LENGTH), np.int64)
    for t in range(LENGTH):
        if t:
            states = draw(transition[states])
        obs[:, t] = draw(emission[states])
    return np.minimum(obs, N_SYMBOLS - 1)


def best_time(fn, *args) -> tuple[float, np.ndarray]:
    """(best wall time of `REPEATS` calls, the last result as NumPy)."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times), np.asarray(result)


def compile_time(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    reference = random_hmm(rng)
    obs = sample(reference, rng)

    def hmmlearn_scores(obs):
        return np.array([reference.score(o[:, None]) for o in obs])

    start = time.perf_counter()
    truth = hmmlearn_scores(obs)
    hmmlearn_s = time.perf_counter() - start

    model = DifferentiableHMM.from_probabilities(
        reference.startprob_, reference.transmat_, reference.emissionprob_
    )

    @eqx.filter_jit
    def ours(model, obs):
        return jax.vmap(model.log_likelihood)(obs)

    pi, a, b = model.probabilities()

    @jax.jit
    def dynamax_scores(obs):
        def one(o):
            return hmm_filter(pi, a, jnp.log(b).T[o]).marginal_loglik

        return jax.vmap(one)(obs)

    obs_jax = jnp.asarray(obs, jnp.int32)
    ours_compile = compile_time(ours, model, obs_jax)
    dynamax_compile = compile_time(dynamax_scores, obs_jax)
    ours_s, ours_ll = best_time(ours, model, obs_jax)
    dynamax_s, dynamax_ll = best_time(dynamax_scores, obs_jax)

    def max_relative_error(values):
        return float(np.max(np.abs(values - truth) / np.abs(truth)))

    print(
        json.dumps(
            {
                "name": "hmm_log_likelihood_256x10000_K8_M4",
                "device": jax.devices()[0].platform,
                "ours_s": round(ours_s, 4),
                "ours_compile_s": round(ours_compile, 3),
                "peer": "hmmlearn",
                "peer_s": round(hmmlearn_s, 4),
                "speedup": round(hmmlearn_s / ours_s, 2),
                "dynamax_s": round(dynamax_s, 4),
                "dynamax_compile_s": round(dynamax_compile, 3),
                "speedup_vs_dynamax": round(dynamax_s / ours_s, 2),
                "max_rel_error": max_relative_error(ours_ll),
                "dynamax_max_rel_error": max_relative_error(dynamax_ll),
            }
        )
    )


if __name__ == "__main__":
    main()
