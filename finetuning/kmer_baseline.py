"""The simple baseline a DNA checkpoint must beat: k-mer counts and logistic regression.

Each sequence becomes the vector of its overlapping k-mer counts over A, C, G, T (``4**k``
columns; a k-mer holding any other letter, such as N, is not counted), scaled to
frequencies so that sequence length does not act as a feature. scikit-learn's
`LogisticRegression` (L2, multinomial, lbfgs) is fitted on the training split and scored
with the fine-tuning metrics (`finetuning.metrics.classification_report`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from finetuning.metrics import classification_report

BASE_CODES = np.full(256, -1, np.int64)
for _code, _letters in enumerate(("Aa", "Cc", "Gg", "Tt")):
    for _letter in _letters:
        BASE_CODES[ord(_letter)] = _code


def kmer_frequencies(sequences: Sequence[str], k: int = 6) -> np.ndarray:
    """``(n, 4**k)`` frequencies of the overlapping k-mers of each sequence (rows sum to 1,
    or to 0 for a sequence with no countable k-mer)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    out = np.zeros((len(sequences), 4**k), np.float32)
    powers = 4 ** np.arange(k - 1, -1, -1)
    for row, sequence in enumerate(sequences):
        codes = BASE_CODES[np.frombuffer(sequence.encode("latin-1", "replace"), np.uint8)]
        if len(codes) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        valid = (windows >= 0).all(1)
        counts = np.bincount(windows[valid] @ powers, minlength=4**k)
        out[row] = counts / max(counts.sum(), 1)
    return out


def kmer_logistic_regression(
    train: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    *,
    k: int = 6,
    regularisation: float = 1.0,
) -> tuple[dict[str, float], np.ndarray]:
    """Fit on ``train = (sequences, labels)``; return the test report (accuracy, MCC,
    macro-F1, AUROC) and the test class probabilities ``(n_test, n_classes)``.

    `regularisation` is scikit-learn's ``C`` (inverse L2 strength).
    """
    train_x, test_x = kmer_frequencies(train[0], k), kmer_frequencies(test[0], k)
    # Frequencies times the mean number of k-mers per training sequence: counts, on the
    # scale `regularisation` is meant for, without making length a feature. (Scaling each
    # column to unit variance instead lifts thousands of noise k-mers to the level of the
    # informative ones, and halves the MCC on a planted motif.)
    scale = max(np.mean([max(len(s) - k + 1, 1) for s in train[0]]), 1.0)
    model = LogisticRegression(C=regularisation, max_iter=2000)
    model.fit(train_x * scale, np.asarray(train[1]))
    n_classes = int(max(np.max(train[1]), np.max(test[1]))) + 1
    probabilities = np.zeros((len(test_x), n_classes))
    probabilities[:, model.classes_] = model.predict_proba(test_x * scale)
    return classification_report(np.asarray(test[1]), probabilities), probabilities
