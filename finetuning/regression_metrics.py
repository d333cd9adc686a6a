"""Regression metrics from targets and predictions, by scikit-learn and scipy.stats.

The mean squared error is `sklearn.metrics.mean_squared_error`; the correlations are
`scipy.stats.pearsonr` and `scipy.stats.spearmanr`. A correlation is NaN where it is not
defined (fewer than two examples, or constant targets or predictions).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics


def correlation(kind: str, y: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson's r (``kind="pearson"``) or Spearman's rho (``"spearman"``); NaN when
    undefined."""
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    function = stats.pearsonr if kind == "pearson" else stats.spearmanr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(function(y, predicted)[0])


def regression_report(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Mean squared error, Pearson's r and Spearman's rho of `predicted` against `y` (both
    of shape ``(n,)``)."""
    y = np.asarray(y, np.float64)
    predicted = np.asarray(predicted, np.float64).reshape(len(y))
    return {
        "mse": float(metrics.mean_squared_error(y, predicted)),
        "pearson": correlation("pearson", y, predicted),
        "spearman": correlation("spearman", y, predicted),
    }


def plot_scatter(y: np.ndarray, predicted: np.ndarray, path, title: str) -> None:
    """Write a PNG scatter plot of predicted against true targets, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(y, np.float64)
    predicted = np.asarray(predicted, np.float64).reshape(len(y))
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.scatter(y, predicted, s=8, alpha=0.6)
    low = float(min(y.min(), predicted.min()))
    high = float(max(y.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    axes.set_xlabel("true")
    axes.set_ylabel("predicted")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
