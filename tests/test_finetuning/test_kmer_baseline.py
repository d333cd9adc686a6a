"""The k-mer logistic-regression baseline: counts checked against scikit-learn's own
character n-gram counter, and the baseline on a task it must solve."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

from finetuning.kmer_baseline import kmer_frequencies, kmer_logistic_regression


def test_kmer_frequencies_equal_scikit_learn_character_ngram_counts(real_dna):
    sequences = [s.upper() for s in real_dna[:8]]
    counter = CountVectorizer(analyzer="char", ngram_range=(4, 4), lowercase=False)
    counts = counter.fit_transform(sequences).toarray()
    ours = kmer_frequencies(sequences, k=4)
    kept = [i for i, kmer in enumerate(counter.get_feature_names_out()) if set(kmer) <= set("ACGT")]
    expected = counts[:, kept] / counts[:, kept].sum(1, keepdims=True)
    codes = {"A": 0, "C": 1, "G": 2, "T": 3}
    columns = [
        sum(codes[b] * 4 ** (3 - i) for i, b in enumerate(kmer))
        for kmer in counter.get_feature_names_out()[kept]
    ]
    np.testing.assert_allclose(ours[:, columns], expected, rtol=1e-6)
    assert np.isclose(ours[:, columns].sum(), len(sequences))  # nothing counted elsewhere


def test_k_mers_with_n_are_not_counted():
    assert kmer_frequencies(["ACNTT"], k=3).sum() == 0
    assert kmer_frequencies(["ACGNTT"], k=3).sum() == 1  # ACG only
    np.testing.assert_allclose(kmer_frequencies(["ACGTN"], k=4).max(), 1.0)


def test_baseline_finds_a_planted_seven_mer():
    rng = np.random.default_rng(0)
    sequences, labels = [], []
    for i in range(400):
        letters = rng.choice(list("ACGT"), 120)
        if i % 2:
            start = rng.integers(40, 70)
            letters[start : start + 7] = list("TGACTCA")
        sequences.append("".join(letters))
        labels.append(i % 2)
    labels = np.array(labels)
    report, probabilities = kmer_logistic_regression(
        (sequences[:300], labels[:300]), (sequences[300:], labels[300:]), k=6
    )
    assert probabilities.shape == (100, 2)
    assert report["mcc"] > 0.8, report
