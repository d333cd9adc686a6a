"""The independent-filtering lowess against statsmodels' (a port of R's ``clowess``) with R's
defaults as DESeq2 calls it: ``f = 1/5``, 3 robustness iterations, every point fitted
(``delta = 0``), on real data. Tolerance: 1e-8 relative, 1e-8 absolute (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import false_discovery_control
from statsmodels.nonparametric.smoothers_lowess import lowess as statsmodels_lowess

import zoo
from pretraining.bulk_counts import pasilla
from zoo.deseq2.multiple_testing import LOWESS_FRACTION, N_CUTOFFS, lowess


def _r_lowess(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return statsmodels_lowess(
        y, x, frac=LOWESS_FRACTION, it=3, delta=0.0, return_sorted=False, is_sorted=True
    )


def _ours(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(lowess(jnp.asarray(x), jnp.asarray(y)))


@pytest.fixture(scope="module")
def rejection_curve():
    """DESeq2's rejections against the filter quantile ``theta`` on pasilla (every 7th gene,
    ``~condition``), computed here with scipy's Benjamini-Hochberg."""
    counts, metadata = pasilla()
    counts = counts.iloc[:, ::7]
    results = zoo.differential_expression(
        counts,
        metadata,
        "~condition",
        ("condition", "treated", "untreated"),
        independent_filter=False,
    )
    base_mean = results["baseMean"].to_numpy()
    pvalues = results["pvalue"].to_numpy()
    theta = np.linspace(np.mean(base_mean == 0), 0.95, N_CUTOFFS)
    rejections = []
    for cutoff in np.quantile(base_mean, theta):
        kept = (base_mean >= cutoff) & ~np.isnan(pvalues)
        rejections.append(np.sum(false_discovery_control(pvalues[kept]) < 0.05))
    return theta, np.asarray(rejections, np.float64)


def test_rejection_curve_smooths_as_r(rejection_curve):
    theta, rejections = rejection_curve
    assert rejections.max() > 10
    np.testing.assert_allclose(
        _ours(theta, rejections), _r_lowess(theta, rejections), rtol=1e-8, atol=1e-8
    )


def test_noisy_counts_smooth_as_r():
    """Two pasilla samples' log counts over 400 genes counted at least 10 times in both:
    noisy, with some ties and outliers (fewer ties than a neighbourhood holds: statsmodels
    divides by zero where more than ``f n`` points share an ``x``)."""
    counts, _ = pasilla()
    pair = counts.iloc[:2].to_numpy(np.float64)
    pair = np.log(pair[:, (pair >= 10).all(axis=0)][:, :400])
    order = np.argsort(pair[0], kind="stable")
    x, y = pair[0][order], pair[1][order]
    np.testing.assert_allclose(_ours(x, y), _r_lowess(x, y), rtol=1e-8, atol=1e-8)
