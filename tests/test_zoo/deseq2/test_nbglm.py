"""`zoo.DifferentiableNBGLM` / `zoo.differential_expression` against pydeseq2, on the real
pasilla (``~condition``) and airway (``~cell + dex``) count tables.

pydeseq2 runs in the same session on the same genes: every 7th gene of pasilla and every
32nd of airway (about 2,000 each; the full tables are compared in ``benchmarks.nbglm``).
Tolerances (from the issue): log2 fold changes Pearson >= 0.99 on genes with baseMean >= 10,
final dispersions Spearman >= 0.95, Jaccard >= 0.9 between the padj < 0.05 sets. Size
factors must agree to 1e-10 relative and the standard errors to 2% relative in median (on
airway's five-coefficient design the inverse of the Fisher information's diagonal alone
would be about 30% off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from deseq2_peer import run_pydeseq2
from scipy.stats import false_discovery_control

import zoo
from pretraining.bulk_counts import airway, pasilla
from zoo import DesignError, DifferentiableNBGLM, DifferentiableNBGLMConfig
from zoo.deseq2.design import design_matrix
from zoo.deseq2.model import fit_expressed
from zoo.deseq2.multiple_testing import benjamini_hochberg
from zoo.deseq2.wald import wald_test

# pydeseq2 warns that airway's 3 residual degrees of freedom make its prior width rough.
pytestmark = pytest.mark.filterwarnings("ignore:As the residual degrees of freedom")

SE_MEDIAN_RTOL = 0.02  # dispersions differ slightly; a diagonal covariance is off by ~30%

EXPERIMENTS = {
    "pasilla": (pasilla, 7, "~condition", ("condition", "treated", "untreated")),
    "airway": (airway, 32, "~cell + dex", ("dex", "trt", "untrt")),
}


@pytest.fixture(scope="module", params=sorted(EXPERIMENTS))
def comparison(request):
    """Our results and pydeseq2's on one experiment's gene subset."""
    loader, every, formula, contrast = EXPERIMENTS[request.param]
    counts, metadata = loader()
    counts = counts.iloc[:, ::every]
    dds, stats = run_pydeseq2(counts, metadata, formula, contrast)
    ours = zoo.differential_expression(counts, metadata, formula, contrast)
    design = design_matrix(metadata, formula)
    config = DifferentiableNBGLMConfig(
        n_genes=counts.shape[1], n_coefficients=design.matrix.shape[1]
    )
    with jax.enable_x64(True):
        fit = fit_expressed(counts.to_numpy(np.float64), design.matrix, config)
    return {"name": request.param, "dds": dds, "peer": stats.results_df, "ours": ours, "fit": fit}


def test_size_factors_match_pydeseq2(comparison):
    ours = np.asarray(comparison["fit"].size_factors)
    peer = comparison["dds"].obs["size_factors"].to_numpy()
    np.testing.assert_allclose(ours, peer, rtol=1e-10)


def test_base_means_match_pydeseq2(comparison):
    np.testing.assert_allclose(comparison["ours"]["baseMean"], comparison["peer"]["baseMean"])


def test_log2_fold_changes_correlate(comparison):
    ours, peer = comparison["ours"], comparison["peer"]
    keep = peer["baseMean"] >= 10
    r = np.corrcoef(ours.loc[keep, "log2FoldChange"], peer.loc[keep, "log2FoldChange"])[0, 1]
    assert keep.sum() >= 400 and r >= 0.99, r


def test_dispersions_rank_alike(comparison):
    ours = np.asarray(comparison["fit"].dispersions)
    peer = comparison["dds"].var["dispersions"].to_numpy()
    fitted = np.isfinite(peer)
    assert np.array_equal(np.isfinite(ours), fitted)
    rho = scipy.stats.spearmanr(ours[fitted], peer[fitted]).statistic
    assert rho >= 0.95, rho


def test_significant_sets_overlap(comparison):
    ours = set(comparison["ours"].index[comparison["ours"]["padj"] < 0.05])
    peer = set(comparison["peer"].index[comparison["peer"]["padj"] < 0.05])
    jaccard = len(ours & peer) / len(ours | peer)
    assert len(peer) > 20 and jaccard >= 0.9, (len(ours), len(peer), jaccard)


def test_standard_errors_use_the_full_covariance(comparison):
    ours, peer = comparison["ours"], comparison["peer"]
    both = ours["lfcSE"].notna() & peer["lfcSE"].notna()
    relative = np.abs(ours.loc[both, "lfcSE"] / peer.loc[both, "lfcSE"] - 1)
    assert np.median(relative) < SE_MEDIAN_RTOL, np.median(relative)


def test_untested_genes_match_pydeseq2(comparison):
    """Genes with no count, and Cook's outliers, have no p-value in either tool."""
    ours, peer = comparison["ours"], comparison["peer"]
    for column in ("log2FoldChange", "pvalue"):
        assert np.array_equal(ours[column].isna(), peer[column].isna()), column


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    pvalues = rng.uniform(size=500) ** 3
    tested = rng.uniform(size=500) > 0.2
    expected = np.full(500, np.nan)
    expected[tested] = false_discovery_control(pvalues[tested], method="bh")
    ours = np.asarray(benjamini_hochberg(jnp.asarray(pvalues), jnp.asarray(tested)))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def pasilla_subset():
    """The counted genes of the pasilla comparison (the shapes it compiled for)."""
    loader, every, formula, _ = EXPERIMENTS["pasilla"]
    counts, metadata = loader()
    counts = counts.iloc[:, ::every]
    counts = counts.loc[:, counts.sum() > 0]
    design = design_matrix(metadata, formula)
    config = DifferentiableNBGLMConfig(n_genes=counts.shape[1], n_coefficients=2)
    return counts, metadata, design, config


def test_gradients_flow_to_the_counts(pasilla_subset):
    """The gradient of five well-expressed genes' Wald statistics with respect to every
    count is finite, and along a random change of those genes' counts it matches a
    central finite difference. (Perturbing every gene is no test: the median, the trend's
    gene filter and the solvers' stopping points make the fit piecewise smooth.)"""
    counts, _, design, config = pasilla_subset
    contrast = design.contrast("condition", "treated", "untreated")
    rng = np.random.default_rng(0)
    genes = rng.choice(np.flatnonzero(counts.mean(axis=0) > 200), 5, replace=False)
    with jax.enable_x64(True):
        x = jnp.asarray(counts.to_numpy(np.float64))

        def total_stat(c):
            fit = zoo.fit_nbglm(c, design.matrix, config)
            test = wald_test(
                fit.coefficients, fit.covariance, contrast, fit.base_mean, fit.cooks_outlier
            )
            return jnp.sum(test.stat[genes])

        gradient = jax.jit(jax.grad(total_stat))(x)
        assert np.all(np.isfinite(gradient))
        assert np.all(np.abs(np.asarray(gradient)[:, genes]) > 0)

        direction = np.zeros(x.shape)
        direction[:, genes] = rng.normal(size=(x.shape[0], len(genes)))
        direction = x * jnp.asarray(direction)
        step = 1e-4
        numeric = (total_stat(x + step * direction) - total_stat(x - step * direction)) / (2 * step)
        analytic = jnp.sum(gradient * direction)
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-4)


def test_dispersion_is_the_variance_coefficient(pasilla_subset):
    """On negative binomial counts simulated with ``Var = mu + 0.2 mu^2`` (pasilla's shape
    and design) the estimates are near 0.2, where an estimate of the NB size would be near
    5; and the model's likelihood is scipy's NB with ``n = 1 / alpha``."""
    _, _, design, config = pasilla_subset
    rng = np.random.default_rng(1)
    alpha = 0.2
    means = rng.uniform(20, 500, size=config.n_genes) * rng.uniform(0.6, 1.6, size=(7, 1))
    counts = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * means))
    model = DifferentiableNBGLM(config).fit(counts, design.matrix)
    assert 0.17 < np.median(model.dispersions) < 0.24, np.median(model.dispersions)
    row = jnp.asarray(design.matrix[0], jnp.float32)
    mean = np.asarray(model(row), np.float64)
    ours = np.asarray(model.log_likelihood(jnp.asarray(counts[0], jnp.float32), row))
    size = 1 / np.asarray(model.dispersions, np.float64)
    expected = scipy.stats.nbinom.logpmf(counts[0], size, size / (size + mean))
    np.testing.assert_allclose(ours, expected, rtol=1e-3)  # float32 model arrays


def test_model_saves_and_loads(pasilla_subset, tmp_path):
    counts, metadata, design, config = pasilla_subset
    model = DifferentiableNBGLM(config).fit(counts.to_numpy(), design.matrix)
    zoo.save_pretrained(model, tmp_path / "nbglm")
    loaded = zoo.from_pretrained(tmp_path / "nbglm")
    assert loaded.config == config
    for name in ("coefficients", "covariance", "dispersions", "base_mean", "cooks_outlier"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    contrast = design.contrast("condition", "treated", "untreated")
    test = loaded.wald_test(contrast)
    reference = zoo.differential_expression(
        counts, metadata, "~condition", ("condition", "treated", "untreated")
    )
    np.testing.assert_allclose(
        np.asarray(test.log2_fold_change), reference["log2FoldChange"], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(test.stat), reference["stat"], rtol=1e-3, atol=1e-4)


def _pasilla_inputs():
    counts, metadata = pasilla()
    return counts.iloc[:, :300], metadata


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda c: c.mask(c == c.max().max(), -1), "negative"),
        (lambda c: c.astype(float).mask(c == c.max().max(), 2.5), "non-integer"),
        (lambda c: c.astype(float).mask(c == c.max().max(), np.nan), "NaN"),
    ],
)
def test_bad_counts_are_refused(corrupt, message):
    counts, metadata = _pasilla_inputs()
    with pytest.raises(ValueError, match=message):
        zoo.differential_expression(
            corrupt(counts), metadata, "~condition", ("condition", "treated", "untreated")
        )


def test_mismatched_sample_names_are_refused():
    counts, metadata = _pasilla_inputs()
    metadata = metadata.rename(index={"treated1": "treated9"})
    with pytest.raises(ValueError, match="sample names"):
        zoo.differential_expression(
            counts, metadata, "~condition", ("condition", "treated", "untreated")
        )


def test_rank_deficient_design_is_refused():
    counts, metadata = _pasilla_inputs()
    metadata = metadata.assign(
        knockdown=metadata["condition"].map({"treated": "yes", "untreated": "no"})
    )
    with pytest.raises(DesignError, match="rank"):
        zoo.differential_expression(
            counts, metadata, "~condition + knockdown", ("condition", "treated", "untreated")
        )


@pytest.mark.parametrize(
    ("formula", "contrast", "message"),
    [
        ("~condition", ("condition", "treated", "mock"), "no level"),
        ("~condition", ("type", "paired-end", "single-read"), "not a factor"),
        ("~condition:type", ("condition", "treated", "untreated"), "unsupported term"),
        ("~batch", ("condition", "treated", "untreated"), "not a metadata column"),
    ],
)
def test_bad_designs_are_refused(formula, contrast, message):
    counts, metadata = _pasilla_inputs()
    with pytest.raises(DesignError, match=message):
        zoo.differential_expression(counts, metadata, formula, contrast)


def test_model_refuses_wrong_shapes(pasilla_subset):
    counts, _, design, config = pasilla_subset
    with pytest.raises(ValueError, match="genes"):
        DifferentiableNBGLM(config).fit(counts.to_numpy()[:, :-1], design.matrix)
    with pytest.raises(ValueError, match="rank"):
        DifferentiableNBGLM(config).fit(counts.to_numpy(), np.ones((7, 2)))
