"""Classification metrics from labels and predicted class probabilities, by scikit-learn.

All take integer labels ``y`` in ``[0, n_classes)`` and probabilities ``p`` of shape
``(n, n_classes)`` (rows summing to 1). The figures are scikit-learn's own
(`sklearn.metrics`): accuracy, the multi-class Matthews correlation (Gorodkin, 2004),
macro-F1 over the classes present in ``y`` or the predictions, and one-vs-rest AUROC.

What stays ours: a test split need not hold every class. scikit-learn's multi-class
``roc_auc_score`` then refuses the whole split, so AUROC here is the mean of the per-class
one-vs-rest areas over the classes that have both positives and negatives in ``y`` (for all
classes present, this is exactly scikit-learn's macro "ovr" average), and NaN when none has.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]``: examples of true class ``i`` predicted as ``j`` (``n_classes`` square)."""
    return metrics.confusion_matrix(y, predicted, labels=np.arange(n_classes))


def macro_auroc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over classes with both positives and negatives in `y`."""
    y = np.asarray(y)
    areas = [
        metrics.roc_auc_score(y == c, probabilities[:, c])
        for c in range(probabilities.shape[1])
        if 0 < (y == c).sum() < len(y)
    ]
    return float(np.mean(areas)) if areas else float("nan")


def classification_report(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, Matthews correlation, macro-F1 and macro AUROC of the arg-max predictions."""
    y = np.asarray(y)
    probabilities = np.asarray(probabilities, np.float64)
    predicted = probabilities.argmax(1)
    return {
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "mcc": float(metrics.matthews_corrcoef(y, predicted)),
        "macro_f1": float(metrics.f1_score(y, predicted, average="macro", zero_division=0.0)),
        "auroc": macro_auroc(y, probabilities),
    }


def plot_confusion_matrix(matrix: np.ndarray, labels: list[str], path, title: str) -> None:
    """Write a confusion-matrix heat map (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.45 * len(labels)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axes.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
