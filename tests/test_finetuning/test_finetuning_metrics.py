"""Fine-tuning metrics agree with scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics

from finetuning.metrics import classification_report, confusion_matrix


@pytest.mark.parametrize("n_classes", [2, 5])
def test_metrics_match_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 300)
    logits = rng.normal(size=(300, n_classes)) + 1.5 * np.eye(n_classes)[y]
    logits[:20] = logits[:20].round(0)  # ties in the scores
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = classification_report(y, p)
    predicted = p.argmax(1)
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(y, predicted))
    assert report["mcc"] == pytest.approx(metrics.matthews_corrcoef(y, predicted), rel=1e-10)
    assert report["macro_f1"] == pytest.approx(
        metrics.f1_score(y, predicted, average="macro"), rel=1e-10
    )
    reference = (
        metrics.roc_auc_score(y, p[:, 1])
        if n_classes == 2
        else metrics.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert report["auroc"] == pytest.approx(reference, rel=1e-10)
    np.testing.assert_array_equal(
        confusion_matrix(y, predicted, n_classes), metrics.confusion_matrix(y, predicted)
    )
