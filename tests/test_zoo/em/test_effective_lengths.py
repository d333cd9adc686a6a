"""Effective lengths (`zoo.em.effective_lengths`) against kallisto 0.48.0, run in this test
session: from the transcript FASTA and kallisto's pseudoalignments alone, ours must give
kallisto's ``eff_length``, ``est_counts`` and ``tpm``."""

from __future__ import annotations

import gzip
import re

import jax
import numpy as np
import pytest
from scipy import stats

from pretraining.kallisto import run_kallisto
from pretraining.sources import dataset
from zoo import DifferentiableEMQuantifier, DifferentiableEMQuantifierConfig
from zoo.em.effective_lengths import FragmentLengths, effective_lengths
from zoo.em.kallisto_io import read_abundance, read_fragment_lengths, read_pseudoalignments
from zoo.sequence.fasta import read_fasta

KALLISTO_READS = ("kallisto-reads-1", "kallisto-reads-2")


def _kallisto_runs(transcripts, reads, out, *options):
    """kallisto's quant (with ``--pseudobam``) and pseudo outputs, and quant's stderr."""
    index = out / "transcripts.idx"
    run_kallisto("index", "-i", index, transcripts)
    log = run_kallisto("quant", "-i", index, "-o", out / "quant", "--pseudobam", *options, *reads)
    run_kallisto("pseudo", "-i", index, "-o", out / "pseudo", *options, *reads)
    abundance = read_abundance(out / "quant" / "abundance.tsv")
    pseudo = read_pseudoalignments(out / "pseudo")
    assert pseudo.names == abundance.names
    return abundance, pseudo.classes, out / "quant" / "pseudoalignments.bam", log


def _fasta_lengths(path, names):
    lengths = {name: len(sequence) for name, sequence in read_fasta(path)}
    return np.array([lengths[name] for name in names])


def _quantify(lengths, classes):
    config = DifferentiableEMQuantifierConfig(n_transcripts=len(lengths))
    return DifferentiableEMQuantifier(config).with_effective_lengths(lengths).quantify(classes)


def _reported_mean(log):
    return float(re.search(r"estimated average fragment length: ([0-9.]+)", log).group(1))


@pytest.fixture(scope="module")
def kallisto_test_data(tmp_path_factory):
    """kallisto's own test set, with the fragment-length distribution estimated from pairs."""
    transcripts = dataset("kallisto-transcripts", quiet=True)
    reads = [dataset(name, quiet=True) for name in KALLISTO_READS]
    runs = _kallisto_runs(transcripts, reads, tmp_path_factory.mktemp("kallisto_fld"))
    return transcripts, runs


def test_estimated_distribution_gives_kallistos_effective_lengths(kallisto_test_data):
    transcripts, (abundance, classes, bam, log) = kallisto_test_data
    shipped = read_abundance(dataset("kallisto-abundance", quiet=True))  # kallisto's quant_out
    assert shipped.names == abundance.names
    fragments = FragmentLengths.from_observed(read_fragment_lengths(bam))
    # kallisto measures pairs on its index's contigs and skips pairs across contigs; the BAM
    # gives 178.23 against kallisto's 178.02, so lengths agree to 0.3 bases.
    assert abs(float(fragments.mean) - _reported_mean(log)) < 0.3
    ours = np.asarray(effective_lengths(_fasta_lengths(transcripts, abundance.names), fragments))
    np.testing.assert_allclose(ours, shipped.effective_lengths, atol=0.3)
    result = _quantify(ours, classes)
    expressed = shipped.est_counts >= 10
    assert expressed.sum() >= 10
    # 0.3 bases in 1,300 or more moves shares of multi-mapping reads by under 1e-3.
    np.testing.assert_allclose(
        result.est_counts[expressed], shipped.est_counts[expressed], rtol=1e-3
    )
    np.testing.assert_allclose(result.tpm[expressed], shipped.tpm[expressed], rtol=1e-3)


def test_estimated_distribution_on_the_salmon_sample(shared_data, tmp_path):
    # One transcript (849 bases) is shorter than kallisto's longest fragment length, so its
    # effective length uses the distribution truncated at its length.
    folder = shared_data / "salmon_sample"
    reads = [folder / "reads_1.fastq.gz", folder / "reads_2.fastq.gz"]
    abundance, classes, bam, _ = _kallisto_runs(folder / "transcripts.fasta", reads, tmp_path)
    lengths = _fasta_lengths(folder / "transcripts.fasta", abundance.names)
    np.testing.assert_array_equal(lengths, abundance.lengths)
    assert lengths.min() < 1000
    fragments = FragmentLengths.from_observed(read_fragment_lengths(bam))
    ours = np.asarray(effective_lengths(lengths, fragments))
    np.testing.assert_allclose(ours, abundance.effective_lengths, atol=0.3)  # measured 0.10
    result = _quantify(ours, classes)
    expressed = abundance.est_counts >= 10
    np.testing.assert_allclose(
        result.est_counts[expressed], abundance.est_counts[expressed], rtol=1e-3
    )
    np.testing.assert_allclose(result.tpm[expressed], abundance.tpm[expressed], rtol=1e-3)


def test_given_normal_distribution_matches_kallisto_on_short_transcripts(tmp_path):
    # kallisto's transcripts cut to lengths around and below the mean fragment length (200).
    cut = [45, 80, 120, 150, 170, 185, 200, 230, 300, 500, 999, 1000, 1500, None]
    source = read_fasta(dataset("kallisto-transcripts", quiet=True))
    fasta = tmp_path / "short.fasta"
    with open(fasta, "w") as f:
        for (name, sequence), length in zip(source, cut, strict=True):
            f.write(f">{name}\n{sequence[:length]}\n")
    reads = [dataset(name, quiet=True) for name in KALLISTO_READS]
    abundance, classes, _, _ = _kallisto_runs(fasta, reads, tmp_path, "-l", "200", "-s", "20")
    lengths = _fasta_lengths(fasta, abundance.names)
    assert lengths.min() == 45
    fragments = FragmentLengths.truncated_normal(200.0, 20.0)
    ours = np.asarray(effective_lengths(lengths, fragments))
    # abundance.tsv holds 6 significant digits; our float32 truncated means are within 1e-4
    # bases of kallisto's float64 ones (the largest gap is 6.6e-5, at 45 bases).
    np.testing.assert_allclose(ours, abundance.effective_lengths, rtol=1e-5, atol=2e-4)
    assert ours[0] < 10  # 45 bases: only the shortest fragments fit
    result = _quantify(ours, classes)
    np.testing.assert_allclose(result.est_counts, abundance.est_counts, rtol=1e-4, atol=1e-3)
    expressed = abundance.est_counts >= 10
    np.testing.assert_allclose(result.tpm[expressed], abundance.tpm[expressed], rtol=1e-4)


def test_observed_lengths_give_truncated_means():
    fragments = FragmentLengths.from_observed([100, 200, 300, 300])
    assert float(fragments.mean) == 225.0
    # L=50: no fragment fits, mean 0, so L + 1; L=120: 120 - 100 + 1; L=250: 250 - 150 + 1;
    # L >= 1000: L - 225 + 1.
    np.testing.assert_allclose(
        effective_lengths([50, 120, 250, 999, 5000], fragments),
        [51.0, 21.0, 101.0, 775.0, 4776.0],
    )


def test_normal_truncated_means_match_scipy():
    support = np.arange(1000)
    density = stats.norm.pdf(support, 180.0, 35.0)
    expected = np.cumsum(support * density) / np.cumsum(density)
    fragments = FragmentLengths.truncated_normal(180.0, 35.0)
    np.testing.assert_allclose(fragments.truncated_means[60:], expected[60:], rtol=1e-5)
    np.testing.assert_allclose(fragments.truncated_means[:60], expected[:60], rtol=1e-3)


def test_effective_lengths_are_differentiable_in_the_fragment_distribution():
    lengths = np.array([150, 400, 3000])

    def total(mean, sd):
        return effective_lengths(lengths, FragmentLengths.truncated_normal(mean, sd)).sum()

    d_mean, d_sd = jax.grad(total, argnums=(0, 1))(200.0, 20.0)
    step = 0.01
    numeric = (total(200.0 + step, 20.0) - total(200.0 - step, 20.0)) / (2 * step)
    np.testing.assert_allclose(d_mean, numeric, rtol=1e-2)
    assert d_mean < 0 and np.isfinite(d_sd)


def test_read_fragment_lengths_keeps_the_first_pairs(kallisto_test_data):
    _, (_, _, bam, _) = kallisto_test_data
    everything = read_fragment_lengths(bam)
    assert 5_000 < everything.size < 10_000  # uniquely pseudoaligned pairs of 10,000
    np.testing.assert_array_equal(read_fragment_lengths(bam, max_pairs=100), everything[:100])


ONE_FRAGMENT = FragmentLengths.from_observed([50])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: FragmentLengths.truncated_normal(200.0, 0.0), "sd must be positive"),
        (lambda: FragmentLengths.truncated_normal(np.nan, 20.0), "mean must be positive"),
        (lambda: FragmentLengths.from_observed([]), "lengths is empty"),
        (lambda: FragmentLengths.from_observed([100, 1000]), "lengths must be whole"),
        (lambda: FragmentLengths.from_observed(np.array([100, 20.5])), "lengths must be whole"),
        (lambda: effective_lengths([100, 0], ONE_FRAGMENT), "transcript_lengths"),
        (lambda: effective_lengths(np.array([[100]]), ONE_FRAGMENT), "transcript_lengths"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_read_fragment_lengths_refuses_other_files(tmp_path):
    path = tmp_path / "not.bam"
    path.write_bytes(gzip.compress(b"SAM text"))
    with pytest.raises(ValueError, match="not a BAM file"):
        read_fragment_lengths(path)
