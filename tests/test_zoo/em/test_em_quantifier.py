"""`DifferentiableEMQuantifier` against kallisto 0.48.0 (run in this test session on its own
test data and on the salmon sample), and its exactness, gradients and input checks."""

from __future__ import annotations

import collections
import gzip

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from pretraining.kallisto import pseudoalign_and_quantify
from pretraining.sources import dataset
from zoo import (
    DifferentiableEMQuantifier,
    DifferentiableEMQuantifierConfig,
    EquivalenceClasses,
)
from zoo.common.config import ConfigError
from zoo.em.kallisto_io import read_abundance, read_pseudoalignments


def _quantifier(lengths, **config) -> DifferentiableEMQuantifier:
    config = DifferentiableEMQuantifierConfig(n_transcripts=len(lengths), **config)
    return DifferentiableEMQuantifier(config).with_effective_lengths(lengths)


def _kallisto(transcripts, reads_1, reads_2, out):
    run = pseudoalign_and_quantify(transcripts, reads_1, reads_2, out)
    abundance = read_abundance(run.quant_dir / "abundance.tsv")
    pseudo = read_pseudoalignments(run.pseudo_dir)
    assert pseudo.names == abundance.names
    return abundance, pseudo.classes


@pytest.fixture(scope="module")
def kallisto_test_data(tmp_path_factory):
    """kallisto's own test set (Debian kallisto-examples), quantified by kallisto now."""
    return _kallisto(
        dataset("kallisto-transcripts", quiet=True),
        dataset("kallisto-reads-1", quiet=True),
        dataset("kallisto-reads-2", quiet=True),
        tmp_path_factory.mktemp("kallisto_test"),
    )


def test_matches_kallisto_est_counts_and_tpm(kallisto_test_data):
    abundance, classes = kallisto_test_data
    shipped = read_abundance(dataset("kallisto-abundance", quiet=True))  # kallisto's quant_out
    assert shipped.names == abundance.names
    np.testing.assert_allclose(abundance.est_counts, shipped.est_counts, rtol=1e-5)
    ours = _quantifier(abundance.effective_lengths).quantify(classes)
    expressed = abundance.est_counts >= 10
    assert expressed.sum() >= 10
    np.testing.assert_allclose(
        ours.est_counts[expressed], abundance.est_counts[expressed], rtol=0.01
    )
    np.testing.assert_allclose(ours.tpm[expressed], abundance.tpm[expressed], rtol=0.01)
    # The same convergence rule makes the same number of updates as kallisto reports
    # (52 rounds counted from 0, plus the last update), so the agreement is much tighter.
    np.testing.assert_allclose(ours.est_counts, abundance.est_counts, rtol=1e-4, atol=1e-3)


def test_fixed_number_of_updates_reaches_the_converged_answer(kallisto_test_data):
    abundance, classes = kallisto_test_data
    converged = _quantifier(abundance.effective_lengths).quantify(classes)
    updated = _quantifier(abundance.effective_lengths, n_updates=200)(classes)
    expressed = abundance.est_counts >= 10
    np.testing.assert_allclose(
        updated.est_counts[expressed], converged.est_counts[expressed], rtol=0.01
    )


def test_salmon_sample_error_against_truth_matches_kallisto(shared_data, tmp_path):
    folder = shared_data / "salmon_sample"
    abundance, classes = _kallisto(
        folder / "transcripts.fasta",
        folder / "reads_1.fastq.gz",
        folder / "reads_2.fastq.gz",
        tmp_path,
    )
    truth = collections.Counter()
    with gzip.open(folder / "reads_1.fastq.gz", "rt") as reads:
        for number, line in enumerate(reads):
            if number % 4 == 0:  # read names look like @1:NM_014620:16:182
                truth[line[1:].split(":")[1]] += 1
    true_counts = np.array([truth[name] for name in abundance.names], dtype=np.float64)
    assert true_counts.sum() == 10_000
    ours = np.asarray(_quantifier(abundance.effective_lengths).quantify(classes).est_counts)

    def error(estimate):  # fraction of reads assigned to the wrong transcript
        return np.abs(estimate - true_counts).sum() / (2 * true_counts.sum())

    print(
        f"salmon_sample misassigned reads: ours {error(ours):.4%}, "
        f"kallisto {error(abundance.est_counts):.4%}"
    )
    assert error(ours) < 0.02
    assert abs(error(ours) - error(abundance.est_counts)) < 1e-4
    expressed = abundance.est_counts >= 10
    np.testing.assert_allclose(ours[expressed], abundance.est_counts[expressed], rtol=0.01)


def test_uniquely_mapping_reads_give_the_true_tpm():
    # Molecule fractions rho and effective lengths; uniquely mapping reads are drawn in
    # proportion to rho * length, so the truth is TPM = 1e6 * rho.
    rho = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    lengths = np.array([100.0, 250.0, 1000.0, 2000.0, 4000.0])
    reads = rho * lengths * 10  # 100, 500, 3000, 3000, 10000 reads
    classes = EquivalenceClasses.from_lists([[t] for t in range(5)], reads, 5)
    model = _quantifier(lengths, n_updates=3)
    for result in (model.quantify(classes), model(classes)):
        np.testing.assert_allclose(result.tpm, 1e6 * rho, rtol=1e-6)
        np.testing.assert_allclose(result.est_counts, reads, rtol=1e-6)
        np.testing.assert_allclose(result.read_fractions, reads / reads.sum(), rtol=1e-6)


def test_tempered_update_shares_reads_by_powered_weights():
    lengths = np.array([100.0, 400.0])
    classes = EquivalenceClasses.from_lists([[0, 1]], [100.0], 2)
    for temperature in (0.5, 1.0, 2.0):
        # One update from equal counts shares the class in proportion to (1 / l) ** (1 / T).
        result = _quantifier(lengths, n_updates=1, temperature=temperature)(classes)
        weights = (1 / lengths) ** (1 / temperature)
        np.testing.assert_allclose(result.est_counts, 100 * weights / weights.sum(), rtol=1e-5)


def _random_table(rng, n_classes, largest):
    """Classes of 1 to `largest` of 40 transcripts, some with no reads, and transcripts 0-4
    in no class at all."""
    n_transcripts = 40
    sizes = np.minimum(rng.geometric(0.25, n_classes), largest)
    classes = {tuple(sorted(rng.choice(range(5, n_transcripts), s, False).tolist())) for s in sizes}
    classes = sorted(classes)
    counts = rng.poisson(20.0, len(classes)) * (rng.random(len(classes)) > 0.2)
    return classes, counts.astype(np.float64), rng.uniform(100.0, 3000.0, n_transcripts)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 3.0])
def test_updates_match_a_dense_numpy_em(temperature):
    rng = np.random.default_rng(7)
    classes, counts, lengths = _random_table(rng, n_classes=120, largest=30)  # many buckets
    membership = np.zeros((len(classes), lengths.size))
    for row, members in enumerate(classes):
        membership[row, list(members)] = 1.0
    expected = np.full(lengths.size, 1.0 / lengths.size)
    for _ in range(3):  # from equal counts, shares proportional to (n / l) ** (1 / T)
        powered = membership * (expected / lengths) ** (1.0 / temperature)
        totals = powered.sum(axis=1, keepdims=True)
        shares = np.divide(powered, totals, out=np.zeros_like(powered), where=totals > 0)
        expected = counts @ shares
    table = EquivalenceClasses.from_lists(classes, counts, lengths.size)
    model = _quantifier(lengths, n_updates=3, temperature=temperature)
    ours = model(table).est_counts
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert np.all(ours[:5] == 0)
    if temperature == 1.0:
        converged = model.quantify(table).est_counts
        np.testing.assert_allclose(converged.sum(), counts.sum(), rtol=1e-5)


def test_gradients_are_finite_with_empty_classes_and_transcripts():
    classes, counts, lengths = _random_table(np.random.default_rng(3), n_classes=30, largest=4)
    table = EquivalenceClasses.from_lists(classes, counts, lengths.size)

    def total(model, table):
        return (model(table).est_counts * jnp.arange(lengths.size)).sum()

    gradients = eqx.filter_jit(jax.grad(total, argnums=(0, 1), allow_int=True))
    for temperature in (1.0, 0.3):
        model = _quantifier(lengths, n_updates=2, temperature=temperature)
        d_model, d_table = gradients(model, table)
        assert np.all(np.isfinite(d_model.effective_lengths))
        assert np.all(np.isfinite(d_table.counts))
        assert np.any(d_table.counts[counts == 0] != 0)  # empty classes still pull


def test_float32_gradients_have_the_right_signs_and_match_finite_differences():
    # Transcripts 0 and 1 share class 2; each also has unique reads.
    classes = EquivalenceClasses.from_lists([[0], [1], [0, 1]], [30.0, 10.0, 60.0], 2)
    model = _quantifier(np.array([500.0, 800.0]), n_updates=30, temperature=0.8)

    @eqx.filter_jit
    def first_count(model, classes):
        return model(classes).est_counts[0]

    d_model, d_classes = jax.grad(first_count, argnums=(0, 1), allow_int=True)(model, classes)
    d_lengths = np.asarray(d_model.effective_lengths)
    d_counts = np.asarray(d_classes.counts)
    assert np.all(np.isfinite(d_lengths)) and np.all(np.isfinite(d_counts))
    assert d_lengths[0] < 0 < d_lengths[1]  # a longer transcript 0 gets fewer shared reads
    assert d_counts[0] > 0 and d_counts[2] > 0  # more of its own or shared reads: more reads
    step = 1.0
    for i in range(2):
        plus = model.with_effective_lengths(model.effective_lengths.at[i].add(step))
        minus = model.with_effective_lengths(model.effective_lengths.at[i].add(-step))
        numeric = (first_count(plus, classes) - first_count(minus, classes)) / (2 * step)
        np.testing.assert_allclose(d_lengths[i], numeric, rtol=0.02)
    for c in range(3):
        plus = eqx.tree_at(lambda e: e.counts, classes, classes.counts.at[c].add(step))
        minus = eqx.tree_at(lambda e: e.counts, classes, classes.counts.at[c].add(-step))
        numeric = (first_count(model, plus) - first_count(model, minus)) / (2 * step)
        np.testing.assert_allclose(d_counts[c], numeric, rtol=0.02)


def test_samples_batch_with_vmap(kallisto_test_data):
    abundance, classes = kallisto_test_data
    model = _quantifier(abundance.effective_lengths, n_updates=20)
    batch = jnp.stack([classes.counts, 2 * classes.counts])

    def quantify(counts):
        return model(eqx.tree_at(lambda e: e.counts, classes, counts)).est_counts

    batched = jax.vmap(quantify)(batch)
    np.testing.assert_allclose(batched[1], 2 * batched[0], rtol=1e-5)
    np.testing.assert_allclose(batched[0], model(classes).est_counts, rtol=1e-6)


def test_saves_and_loads(tmp_path, kallisto_test_data):
    abundance, classes = kallisto_test_data
    model = _quantifier(abundance.effective_lengths, temperature=0.7)
    loaded = zoo.from_pretrained(zoo.save_pretrained(model, tmp_path / "em"))
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.effective_lengths, model.effective_lengths)
    np.testing.assert_array_equal(loaded.quantify(classes).tpm, model.quantify(classes).tpm)


@pytest.mark.parametrize(
    ("transcripts", "counts", "message"),
    [
        ([[0], [1]], [3.0, -1.0], "non-negative"),
        ([[0], [1]], [3.0, 1.5], "whole numbers"),
        ([[0], [1]], [np.nan, 1.0], "NaN"),
        ([[0], []], [3.0, 1.0], "has no transcripts"),
        ([], [], "no equivalence classes"),
        ([[0], [3]], [3.0, 1.0], "outside"),
        ([[0], [-1]], [3.0, 1.0], "outside"),
        ([[0, 1, 0]], [3.0], "twice"),
        ([[0], [1]], [3.0], "one per class"),
    ],
)
def test_bad_classes_are_refused(transcripts, counts, message):
    with pytest.raises(ValueError, match=message):
        EquivalenceClasses.from_lists(transcripts, counts, 3)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([100.0, 0.0, 50.0], "positive"),
        ([100.0, -5.0, 50.0], "positive"),
        ([100.0, np.nan, 50.0], "NaN"),
        ([100.0, 50.0], "shape"),
    ],
)
def test_bad_effective_lengths_are_refused(lengths, message):
    model = DifferentiableEMQuantifier(DifferentiableEMQuantifierConfig(n_transcripts=3))
    with pytest.raises(ValueError, match=message):
        model.with_effective_lengths(np.array(lengths))


def test_mismatched_transcript_count_and_bad_config_are_refused():
    classes = EquivalenceClasses.from_lists([[0], [1]], [3.0, 1.0], 2)
    model = DifferentiableEMQuantifier(DifferentiableEMQuantifierConfig(n_transcripts=3))
    with pytest.raises(ValueError, match="index 2 transcripts"):
        model.quantify(classes)
    with pytest.raises(ValueError, match="whole numbers"):
        classes.with_counts([1.0, 0.5])
    with pytest.raises(ConfigError, match="temperature"):
        DifferentiableEMQuantifierConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="min_iterations"):
        DifferentiableEMQuantifierConfig(min_iterations=20, max_iterations=10)


def test_kallisto_readers_refuse_other_files(tmp_path):
    with pytest.raises(ValueError, match="kallisto pseudo"):
        read_pseudoalignments(tmp_path)
    table = tmp_path / "abundance.tsv"
    table.write_text("name\tcount\nA\t3\n")
    with pytest.raises(ValueError, match="expected kallisto's"):
        read_abundance(table)


def _slow_problem():
    """Transcripts 0 and 1 share most of their reads and differ little in length: the EM
    creeps (its rate is near 1) and a few updates are far from the fixed point."""
    classes = EquivalenceClasses.from_lists(
        [[0], [1], [0, 1], [1, 2], [2]], [6.0, 4.0, 300.0, 40.0, 9.0], 3
    )
    return classes, np.array([900.0, 1000.0, 700.0])


def test_relative_change_shows_whether_the_em_converged():
    classes, lengths = _slow_problem()
    early = _quantifier(lengths, n_updates=5)(classes)
    late = _quantifier(lengths, n_updates=3000)(classes)
    assert float(early.relative_change) > 1e-3
    assert float(late.relative_change) < 1e-6
    converged = _quantifier(lengths).quantify(classes)
    assert float(converged.relative_change) < 0.01  # kallisto's rule stops under its tolerance


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_at_the_fixed_point_match_finite_differences(temperature):
    # float64, so that the EM converges to 1e-12 and central differences with step 1e-3 are
    # accurate to about 1e-7; the implicit-function gradients must agree to 1e-5 relative.
    with jax.enable_x64(True):
        classes, lengths = _slow_problem()
        classes = eqx.tree_at(lambda c: c.counts, classes, classes.counts.astype(jnp.float64))
        model = _quantifier(lengths, n_updates=20_000, temperature=temperature)
        model = eqx.tree_at(lambda m: m.effective_lengths, model, jnp.asarray(lengths))
        weights = jnp.array([1.0, -2.0, 0.5])

        @eqx.filter_jit
        def loss(model, classes):
            result = model(classes)
            return (result.est_counts * weights).sum() + 1e-3 * result.tpm[2], result

        (_, result), (d_model, d_classes) = jax.value_and_grad(
            loss, argnums=(0, 1), has_aux=True, allow_int=True
        )(model, classes)
        assert float(result.relative_change) < 1e-12
        step = 1e-3
        for i in range(3):
            plus = eqx.tree_at(
                lambda m: m.effective_lengths, model, model.effective_lengths.at[i].add(step)
            )
            minus = eqx.tree_at(
                lambda m: m.effective_lengths, model, model.effective_lengths.at[i].add(-step)
            )
            numeric = (loss(plus, classes)[0] - loss(minus, classes)[0]) / (2 * step)
            np.testing.assert_allclose(d_model.effective_lengths[i], numeric, rtol=1e-5)
        for c in range(classes.n_classes):
            plus = eqx.tree_at(lambda e: e.counts, classes, classes.counts.at[c].add(step))
            minus = eqx.tree_at(lambda e: e.counts, classes, classes.counts.at[c].add(-step))
            numeric = (loss(model, plus)[0] - loss(model, minus)[0]) / (2 * step)
            np.testing.assert_allclose(d_classes.counts[c], numeric, rtol=1e-5, atol=1e-9)
