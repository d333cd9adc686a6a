"""Classification metrics computed from labels and predicted class probabilities.

All take integer labels ``y`` in ``[0, n_classes)`` and probabilities ``p`` of shape
``(n, n_classes)`` (rows summing to 1), and follow scikit-learn's definitions: macro-F1 is
the unweighted mean of per-class F1 over the classes present in ``y`` or the predictions;
the Matthews correlation is the multi-class generalisation of Gorodkin (2004); AUROC is
the macro average of one-vs-rest areas (Hand & Till's "ovr" averaging), over the classes
that have both positives and negatives.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]``: examples of true class ``i`` predicted as ``j``."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(y), np.asarray(predicted)), 1)
    return matrix


def matthews_correlation(matrix: np.ndarray) -> float:
    """Multi-class Matthews correlation coefficient of a confusion matrix."""
    matrix = matrix.astype(np.float64)
    total, correct = matrix.sum(), np.trace(matrix)
    true, predicted = matrix.sum(1), matrix.sum(0)
    numerator = correct * total - true @ predicted
    denominator = np.sqrt((total**2 - predicted @ predicted) * (total**2 - true @ true))
    return float(numerator / denominator) if denominator > 0 else 0.0


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean F1 over classes that occur in the labels or the predictions."""
    tp = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(1), matrix.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean())


def binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (the Mann-Whitney U statistic)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, starts, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = starts + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    n_pos = positive.sum()
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over classes with both positives and negatives."""
    y = np.asarray(y)
    areas = [
        binary_auroc(y == c, probabilities[:, c])
        for c in range(probabilities.shape[1])
        if 0 < (y == c).sum() < len(y)
    ]
    return float(np.mean(areas)) if areas else float("nan")


def classification_report(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, Matthews correlation, macro-F1 and macro AUROC."""
    y = np.asarray(y)
    probabilities = np.asarray(probabilities, np.float64)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(y, predicted, probabilities.shape[1])
    return {
        "accuracy": float((predicted == y).mean()),
        "mcc": matthews_correlation(matrix),
        "macro_f1": macro_f1(matrix),
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
