"""`zoo.DifferentiableHMM` against hmmlearn's CategoricalHMM (float64) and dynamax, on
random models and on real DNA (human chrX), plus fitting, freezing, checkpoints, bad input
and the CpG-island example.

Tolerances (from the issue): log-likelihood relative error <= 1e-5, posteriors <= 1e-5
absolute, Viterbi paths identical. Categorical HMMs have exact ties (two paths using the
same multiset of factors in another order have bit-for-bit equal probability); where the
paths differ, the test checks that both have the same joint probability, evaluated in
float64, so only a genuine tie may be broken differently.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dynamax.hidden_markov_model import hmm_filter, hmm_posterior_mode, hmm_smoother
from hmmlearn.hmm import CategoricalHMM

import zoo
from benchmarks import cpg_islands
from zoo import DifferentiableHMM, DifferentiableHMMConfig, fit_hmm_baum_welch, fit_hmm_gradient

LOG_LIKELIHOOD_RTOL = 1e-5
POSTERIOR_ATOL = 1e-5
WINDOW = 10_000


def random_parameters(rng, n_states, n_symbols):
    return (
        rng.dirichlet(np.ones(n_states)),
        rng.dirichlet(np.ones(n_states), size=n_states),
        rng.dirichlet(np.ones(n_symbols), size=n_states),
    )


def hmmlearn_model(initial, transition, emission, **kwargs) -> CategoricalHMM:
    hmm = CategoricalHMM(len(initial), n_features=emission.shape[1], **kwargs)
    hmm.startprob_, hmm.transmat_, hmm.emissionprob_ = initial, transition, emission
    return hmm


def joint_log_probability(path, obs, initial, transition, emission) -> float:
    """``log p(o, s)`` in float64."""
    return float(
        np.log(initial[path[0]])
        + np.log(emission[path, obs]).sum()
        + np.log(transition[path[:-1], path[1:]]).sum()
    )


def assert_same_viterbi(ours, theirs, obs, parameters):
    ours = np.asarray(ours)
    if not np.array_equal(ours, theirs):
        # only an exact tie may differ: both paths equally probable
        np.testing.assert_allclose(
            joint_log_probability(ours, obs, *parameters),
            joint_log_probability(theirs, obs, *parameters),
            rtol=0,
            atol=1e-8,
        )


@pytest.fixture(scope="module")
def chrx() -> str:
    """The first 70 Mb of human GRCh37 chrX (Debian smalt-examples)."""
    from pretraining.sources import dataset

    return cpg_islands.read_chromosome(dataset("human-chrX-70Mb", quiet=True))


@pytest.fixture(scope="module")
def dna_windows(chrx) -> np.ndarray:
    """Six N-free 10 kb windows of chrX spread over 60 Mb, as codes 0-3, shape (6, 10000)."""
    windows = []
    for start in range(1_000_000, 60_000_000, 10_000_000):
        while "N" in chrx[start : start + WINDOW].upper():
            start += WINDOW
        windows.append(cpg_islands.encode(chrx[start : start + WINDOW]))
    return np.stack(windows).astype(np.int64)


# Agreement with hmmlearn and dynamax ---------------------------------------------------


@pytest.mark.parametrize("n_states, n_symbols", [(2, 3), (3, 5), (6, 4)])
def test_random_models_match_hmmlearn(n_states, n_symbols):
    rng = np.random.default_rng(n_states)
    parameters = random_parameters(rng, n_states, n_symbols)
    reference = hmmlearn_model(*parameters)
    samples, _ = reference.sample(3000, random_state=n_states)
    obs = samples[:, 0]
    model = DifferentiableHMM.from_probabilities(*parameters)

    expected = reference.score(samples)
    ours = float(model.log_likelihood(obs))
    assert abs(ours - expected) <= LOG_LIKELIHOOD_RTOL * abs(expected)
    np.testing.assert_allclose(
        model.posteriors(obs), reference.predict_proba(samples), rtol=0, atol=POSTERIOR_ATOL
    )
    assert_same_viterbi(model.viterbi(obs), reference.decode(samples)[1], obs, parameters)


@pytest.mark.parametrize("n_states", [2, 4, 8])
def test_real_dna_matches_hmmlearn_and_dynamax(dna_windows, n_states):
    rng = np.random.default_rng(10 + n_states)
    parameters = random_parameters(rng, n_states, 4)
    reference = hmmlearn_model(*parameters)
    model = DifferentiableHMM.from_probabilities(*parameters)
    pi, a, b = (jnp.asarray(p, jnp.float32) for p in parameters)

    ours_ll = jax.vmap(model.log_likelihood)(dna_windows)
    ours_post = jax.vmap(model.posteriors)(dna_windows)
    ours_path = jax.vmap(model.viterbi)(dna_windows)
    for i, obs in enumerate(dna_windows):
        expected = reference.score(obs[:, None])
        assert abs(float(ours_ll[i]) - expected) <= LOG_LIKELIHOOD_RTOL * abs(expected)
        np.testing.assert_allclose(
            ours_post[i], reference.predict_proba(obs[:, None]), rtol=0, atol=POSTERIOR_ATOL
        )
        assert_same_viterbi(ours_path[i], reference.decode(obs[:, None])[1], obs, parameters)

        log_emissions = jnp.log(b).T[obs]
        dynamax_ll = float(hmm_filter(pi, a, log_emissions).marginal_loglik)
        assert abs(float(ours_ll[i]) - dynamax_ll) <= LOG_LIKELIHOOD_RTOL * abs(dynamax_ll)
        np.testing.assert_allclose(
            ours_post[i], hmm_smoother(pi, a, log_emissions).smoothed_probs, atol=POSTERIOR_ATOL
        )
        # dynamax's float32 log-space Viterbi may settle for a slightly worse path; ours
        # must never be worse than it
        dynamax_path = np.asarray(hmm_posterior_mode(pi, a, log_emissions))
        ours_joint = joint_log_probability(np.asarray(ours_path[i]), obs, *parameters)
        assert ours_joint >= joint_log_probability(dynamax_path, obs, *parameters) - 1e-8


def test_padding_and_masks_change_nothing():
    rng = np.random.default_rng(3)
    parameters = random_parameters(rng, 3, 4)
    model = DifferentiableHMM.from_probabilities(*parameters)
    reference = hmmlearn_model(*parameters)
    lengths = [500, 120, 377]
    obs = np.full((3, 500), -1)  # padding holds an invalid symbol on purpose
    mask = np.zeros((3, 500), bool)
    sequences = [rng.integers(0, 4, n) for n in lengths]
    for i, seq in enumerate(sequences):
        obs[i, : len(seq)], mask[i, : len(seq)] = seq, True

    log_likelihoods = jax.vmap(model.log_likelihood)(obs, mask)
    posteriors = jax.vmap(model.posteriors)(obs, mask)
    paths = jax.vmap(model.viterbi)(obs, mask)
    for i, seq in enumerate(sequences):
        n = len(seq)
        expected = reference.score(seq[:, None])
        assert abs(float(log_likelihoods[i]) - expected) <= LOG_LIKELIHOOD_RTOL * abs(expected)
        np.testing.assert_allclose(
            posteriors[i, :n], reference.predict_proba(seq[:, None]), atol=POSTERIOR_ATOL
        )
        assert np.all(posteriors[i, n:] == 0)
        assert_same_viterbi(paths[i, :n], reference.decode(seq[:, None])[1], seq, parameters)
        assert np.all(paths[i, n:] == -1)
    # hmmlearn's own multi-sequence score is the sum over the batch
    total = reference.score(np.concatenate(sequences)[:, None], lengths=lengths)
    assert abs(float(log_likelihoods.sum()) - total) <= LOG_LIKELIHOOD_RTOL * abs(total)


# The smoothed Viterbi ------------------------------------------------------------------


def test_soft_viterbi_interpolates_between_viterbi_and_posteriors(dna_windows):
    rng = np.random.default_rng(5)
    model = DifferentiableHMM.from_probabilities(*random_parameters(rng, 3, 4))
    obs = dna_windows[0, :2000]
    mask = np.arange(2000) < 1800

    soft = model.soft_viterbi(obs, mask, temperature=1.0)
    np.testing.assert_allclose(soft, model.posteriors(obs, mask), atol=1e-4)
    cold = model.soft_viterbi(obs, mask, temperature=1e-3)
    path = np.asarray(model.viterbi(obs, mask))
    assert np.mean(np.asarray(cold).argmax(axis=1)[:1800] == path[:1800]) > 0.99
    np.testing.assert_allclose(np.asarray(cold).sum(axis=1), mask.astype(np.float32), atol=1e-4)

    def loss(hmm):
        return hmm.soft_viterbi(obs, mask)[:, 0].sum()

    grads = jax.grad(loss)(model)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads.transition_logits).max()) > 0


def test_gradients_are_finite_even_with_zero_probabilities(dna_windows):
    # a structural zero (state 1 never emits symbol 3, state 0 is never entered from 1)
    initial = np.array([0.5, 0.5])
    transition = np.array([[0.9, 0.1], [0.0, 1.0]])
    emission = np.array([[0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.3, 0.0]])
    model = DifferentiableHMM.from_probabilities(initial, transition, emission)
    obs = dna_windows[1, :3000]

    def objective(hmm):
        return hmm.log_likelihood(obs) + hmm.posteriors(obs)[:, 1].sum()

    value, grads = jax.value_and_grad(objective)(model)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# Fitting ---------------------------------------------------------------------------------


def em_reference(start: DifferentiableHMM, obs, params: str, n_iter: int) -> CategoricalHMM:
    """hmmlearn's Baum-Welch from the same start, a fixed number of iterations."""
    parameters = [np.asarray(p, np.float64) for p in start.probabilities()]
    parameters = [p / p.sum(axis=-1, keepdims=True) for p in parameters]
    reference = hmmlearn_model(
        *parameters, n_iter=n_iter, tol=-np.inf, init_params="", params=params
    )
    return reference.fit(obs.reshape(-1, 1), lengths=[obs.shape[1]] * obs.shape[0])


@pytest.mark.parametrize("learn_initial", [True, False])
def test_baum_welch_matches_hmmlearn(dna_windows, learn_initial):
    config = DifferentiableHMMConfig(n_states=3, n_symbols=4, learn_initial=learn_initial)
    start = DifferentiableHMM(config, key=jax.random.key(0))
    obs = dna_windows[:, :3000]
    fit = fit_hmm_baum_welch(start, obs, max_iter=8, tol=-np.inf)
    reference = em_reference(start, obs, "ste" if learn_initial else "te", n_iter=8)

    np.testing.assert_allclose(
        fit.history, list(reference.monitor_.history), rtol=LOG_LIKELIHOOD_RTOL
    )
    for ours, theirs in zip(
        fit.model.probabilities(),
        (reference.startprob_, reference.transmat_, reference.emissionprob_),
        strict=True,
    ):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    if not learn_initial:
        assert np.array_equal(fit.model.initial_logits, start.initial_logits)


def test_gradient_fit_improves_and_respects_frozen_parameters(dna_windows):
    config = DifferentiableHMMConfig(n_states=3, n_symbols=4, learn_emission=False)
    start = DifferentiableHMM(config, key=jax.random.key(1))
    obs = dna_windows[:3, :2000]
    mask = np.ones_like(obs, bool)
    mask[1, 1500:] = False
    # weight decay would move any parameter handed to the optimiser
    fit = fit_hmm_gradient(
        start, obs, mask, optimizer=optax.adamw(0.05, weight_decay=0.1), steps=60
    )
    assert fit.history[-1] < fit.history[0] - 1e-3
    assert np.array_equal(fit.model.emission_logits, start.emission_logits)
    assert not np.array_equal(fit.model.transition_logits, start.transition_logits)

    # the freeze also holds for gradients taken through the model by anyone
    grads = jax.grad(lambda hmm: hmm.log_likelihood(obs[0]))(start)
    assert np.all(grads.emission_logits == 0)
    assert np.any(grads.transition_logits != 0)
    spec = start.trainable()
    assert (spec.initial_logits, spec.transition_logits, spec.emission_logits) == (
        True,
        True,
        False,
    )


# Checkpoints and bad input -----------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, dna_windows):
    rng = np.random.default_rng(7)
    model = DifferentiableHMM.from_probabilities(
        *random_parameters(rng, 4, 4), temperature=0.5, learn_transition=False
    )
    zoo.save_pretrained(model, tmp_path / "hmm")
    loaded = zoo.from_pretrained(tmp_path / "hmm")
    assert isinstance(loaded, DifferentiableHMM)
    assert loaded.config == model.config
    for ours, theirs in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        assert np.array_equal(ours, theirs)
    assert float(loaded.log_likelihood(dna_windows[0])) == float(
        model.log_likelihood(dna_windows[0])
    )


def test_from_probabilities_rejects_bad_parameters():
    initial, transition, emission = random_parameters(np.random.default_rng(0), 2, 4)
    with pytest.raises(ValueError, match="initial must sum to 1"):
        DifferentiableHMM.from_probabilities(initial * 0.9, transition, emission)
    bad = transition.copy()
    bad[1] = [1.2, -0.2]
    with pytest.raises(ValueError, match="transition contains negative"):
        DifferentiableHMM.from_probabilities(initial, bad, emission)
    bad = emission.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="emission contains NaN"):
        DifferentiableHMM.from_probabilities(initial, transition, bad)
    with pytest.raises(ValueError, match=r"transition must have shape \(2, 2\)"):
        DifferentiableHMM.from_probabilities(initial, transition[:1], emission)
    with pytest.raises(ValueError, match=r"emission must have shape \(2, M\)"):
        DifferentiableHMM.from_probabilities(initial, transition, emission[:1])
    with pytest.raises(zoo.ConfigError, match="n_states must be positive"):
        DifferentiableHMMConfig(n_states=0)


def test_observations_outside_the_alphabet_are_rejected():
    model = DifferentiableHMM.from_probabilities(*random_parameters(np.random.default_rng(0), 2, 4))
    obs = np.array([0, 1, 2, 3, 4, 0])
    for method in (model.log_likelihood, model.posteriors, model.viterbi, model.soft_viterbi):
        with pytest.raises(ValueError, match=r"observation 4 at position \(4,\) is outside"):
            method(obs)
    with pytest.raises(ValueError, match=r"observation -1 at position \(1,\)"):
        model.log_likelihood(np.array([0, -1, 2]))
    # a masked entry may hold anything
    assert np.isfinite(float(model.log_likelihood(obs, obs < 4)))
    # under jit the values are unknown until run time: the check still fires
    with pytest.raises(eqx.EquinoxRuntimeError, match="outside the symbols"):
        eqx.filter_jit(lambda m, o: m.log_likelihood(o))(model, jnp.asarray(obs))
    with pytest.raises((TypeError, ValueError)):
        model.log_likelihood(np.array([0.0, 1.0]))
    with pytest.raises((TypeError, ValueError)):
        model.log_likelihood(np.zeros((2, 5), int))
    with pytest.raises(ValueError, match=r"observation 7 at position \(1, 2\)"):
        fit_hmm_baum_welch(model, np.array([[0, 1, 2], [3, 0, 7]]))


# The CpG-island example ----------------------------------------------------------------------


def test_overlap_precision_recall_on_a_hand_made_case():
    truth = np.array([[100, 200], [500, 600], [900, 950]])
    called = np.array([[150, 160], [199, 300], [400, 500], [940, 1000]])
    # [150,160) and [199,300) hit the first island, [940,1000) the third; [400,500) ends
    # where the second begins (half-open), so it misses
    assert cpg_islands.overlap_precision_recall(called, truth) == (3 / 4, 2 / 3)


def test_cpg_island_hmm_finds_the_ucsc_islands(chrx, shared_data):
    """Durbin's 8-state CpG HMM trained on chrX [0, 5 Mb), scored on [45, 50 Mb) against
    the UCSC track (89 islands). The full chromosome is in ``benchmarks.cpg_islands``."""
    result = cpg_islands.evaluate(
        chrx,
        shared_data / cpg_islands.CPG_TRACK,
        (0, 5_000_000),
        (45_000_000, 50_000_000),
        min_lengths=(200, 500),
    )
    print(result)
    assert result["annotated"] > 50
    short, long = result["min_length_200"], result["min_length_500"]
    assert short["recall"] >= 0.95
    assert long["recall"] >= 0.8
    # calling everything GC-rich would give a precision near the islands' share of the
    # GC-rich windows; the model must do much better when it calls only long runs
    assert long["precision"] > short["precision"] >= 0.1
