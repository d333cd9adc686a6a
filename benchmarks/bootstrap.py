"""MCC, macro-F1 and AUROC of a classifier's test outputs, with 95 % bootstrap intervals.

The metrics are those of `finetuning.metrics.classification_report` (scikit-learn's
definitions: the multi-class Matthews correlation of Gorodkin (2004), macro-F1 over the
classes present in the labels or the predictions, and the one-vs-rest AUROC averaged over
the classes that have both positives and negatives), computed here from a confusion matrix
and from ranks so that a thousand resamples take a fraction of a second.

The interval is the percentile bootstrap (Efron & Tibshirani, 1993, ch. 13): the test
examples are drawn with replacement ``n_resamples`` times, the metric is recomputed on each
draw, and the 2.5th and 97.5th percentiles are reported.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import rankdata

METRICS = ("mcc", "macro_f1", "auroc")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A metric on the whole test set and its 95 % bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + predicted, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )


def mcc(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K), 0 where it is undefined."""
    c = _confusion(y, predicted, n_classes).astype(np.float64)
    n, correct = c.sum(), np.trace(c)
    true, pred = c.sum(1), c.sum(0)
    denominator = np.sqrt((n**2 - pred @ pred) * (n**2 - true @ true))
    return float((correct * n - true @ pred) / denominator) if denominator > 0 else 0.0


def macro_f1(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present among the labels or the predictions."""
    c = _confusion(y, predicted, n_classes).astype(np.float64)
    true, pred, hits = c.sum(1), c.sum(0), np.diag(c)
    present = (true + pred) > 0
    return float(np.mean(2 * hits[present] / (true[present] + pred[present])))


def auroc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest AUROC (the Mann-Whitney statistic, ties counted half) averaged over the
    classes with both positives and negatives; NaN when none has."""
    areas = []
    for c in range(probabilities.shape[1]):
        positive = y == c
        n_pos = int(positive.sum())
        if 0 < n_pos < len(y):
            ranks = rankdata(probabilities[:, c])
            u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
            areas.append(u / (n_pos * (len(y) - n_pos)))
    return float(np.mean(areas)) if areas else float("nan")


def metric_values(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """MCC, macro-F1 and AUROC of the arg-max predictions of `probabilities` (n, classes)."""
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    return {
        "mcc": mcc(y, predicted, n_classes),
        "macro_f1": macro_f1(y, predicted, n_classes),
        "auroc": auroc(y, probabilities),
    }


def bootstrap_metrics(
    y: np.ndarray, probabilities: np.ndarray, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Each of `METRICS` on all of ``(y, probabilities)`` with its 95 % percentile bootstrap
    interval over `n_resamples` draws of the examples (resamples where a metric is undefined
    are left out of its interval)."""
    y = np.asarray(y, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    point = metric_values(y, probabilities)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in METRICS}
    for _ in range(n_resamples):
        rows = rng.integers(0, len(y), len(y))
        for name, value in metric_values(y[rows], probabilities[rows]).items():
            draws[name].append(value)
    estimates = {}
    for name in METRICS:
        values = np.asarray(draws[name])
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if values.size else (np.nan, np.nan)
        estimates[name] = Estimate(point[name], float(low), float(high))
    return estimates
