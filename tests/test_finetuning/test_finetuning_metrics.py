"""Fine-tuning metrics: scikit-learn's figures, and the one rule that is ours (AUROC over the
classes a split holds)."""

import numpy as np
import pytest
from sklearn import metrics

from finetuning.metrics import classification_report, confusion_matrix


def _probabilities(p_class_1):
    p_class_1 = np.asarray(p_class_1)
    return np.stack([1 - p_class_1, p_class_1], axis=1)


def test_a_worked_binary_example():
    # predictions 0, 1, 0, 1 against truth 0, 0, 1, 1: one of each cell of the table.
    report = classification_report(np.array([0, 0, 1, 1]), _probabilities([0.1, 0.6, 0.4, 0.9]))
    assert report["accuracy"] == 0.5
    assert report["mcc"] == 0.0
    assert report["macro_f1"] == 0.5  # each class: 2 * 1 / (2 + 2)
    # positives score 0.4 and 0.9, negatives 0.1 and 0.6: 3 of the 4 pairs are ordered
    assert report["auroc"] == 0.75


def test_auroc_with_every_class_present_is_the_macro_one_vs_rest_average():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[y]
    logits[:20] = logits[:20].round(0)  # ties in the scores
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    reference = metrics.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert classification_report(y, p)["auroc"] == pytest.approx(reference, rel=1e-12)


def test_a_split_without_some_classes_still_gets_an_auroc_and_a_full_confusion_matrix():
    # 3 classes, but the split holds only classes 0 and 2: scikit-learn's multi-class AUROC
    # refuses this; ours averages the areas of the two classes present (class 1 has no
    # positives). Class 0's scores: positives 0.7, 0.5 over negatives 0.2, 0.6 -> 3/4;
    # class 2's: positives 0.8, 0.05 over negatives 0.1, 0.4 -> 2/4.
    y = np.array([0, 0, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.0, 0.8], [0.6, 0.35, 0.05]])
    with pytest.raises(ValueError):
        metrics.roc_auc_score(y, p, multi_class="ovr")
    assert classification_report(y, p)["auroc"] == pytest.approx((0.75 + 0.5) / 2)
    matrix = confusion_matrix(y, p.argmax(1), 3)
    np.testing.assert_array_equal(matrix, [[2, 0, 0], [0, 0, 0], [1, 0, 1]])


def test_one_class_only_gives_no_auroc():
    report = classification_report(np.array([1, 1, 1]), _probabilities([0.2, 0.7, 0.9]))
    assert np.isnan(report["auroc"])
    assert report["accuracy"] == pytest.approx(2 / 3)
