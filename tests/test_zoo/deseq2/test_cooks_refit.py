"""Replacement of Cook's outlier counts and refit, against pydeseq2 0.5.4 (``refit_cooks``).

Neither real table has 7 replicates per group, so the data are simulated from real genes:
300 expressed pasilla genes (every 25th with a mean count of at least 5) give each group's
mean normalised count and a moments dispersion, and negative binomial counts are drawn for
7 untreated + 7 treated samples with pasilla's size factors (twice over), seed 0. Outliers
are then planted: in ``PLANTED`` genes one sample's count is multiplied by 40, and one gene
counted in a single sample only (which replacement empties) is appended.

Tolerances: the replaced and the finally flagged genes are the same sets as pydeseq2's; on
the refitted genes base means agree to 1e-10 relative, log2 fold changes to 0.001 absolute
and p-values and padj (where both are below 0.5) to 1% relative (dispersions differ
slightly between the two solvers, see ``zoo.deseq2.dispersion``; seen: 1e-5 and 0.4%).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from deseq2_peer import run_pydeseq2

import zoo
from pretraining.bulk_counts import pasilla
from zoo.deseq2.design import design_matrix
from zoo.deseq2.outlier_replacement import CooksRefitWarning

FORMULA = "~condition"
CONTRAST = ("condition", "treated", "untreated")
PER_GROUP = 7
PLANTED = {"gene_010": 0, "gene_050": 3, "gene_090": 8, "gene_130": 12, "gene_170": 6}
EMPTIED = "gene_single"  # counted in one sample only: its replacement leaves no count
OUTLIER_FACTOR = 40
LFC_ATOL = 1e-3
PVALUE_RTOL = 0.01


def _simulated_counts() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts (14 samples x 301 genes) and metadata as the module docstring describes."""
    counts, metadata = pasilla()
    raw = counts.to_numpy(np.float64)
    raw = raw[:, raw.mean(axis=0) >= 5][:, ::25][:, :300]
    positive = raw[:, (raw > 0).all(axis=0)]
    logs = np.log(positive)
    size_factors = np.exp(np.median(logs - logs.mean(axis=0), axis=1))
    normed = raw / size_factors[:, None]
    treated = (metadata["condition"] == "treated").to_numpy()
    group_means = np.stack([normed[~treated].mean(axis=0), normed[treated].mean(axis=0)])
    mean = normed.mean(axis=0)
    dispersion = np.clip((normed.var(axis=0, ddof=1) - mean) / mean**2, 0.005, 2.0)

    rng = np.random.default_rng(0)
    group = np.repeat([0, 1], PER_GROUP)
    sizes = np.tile(size_factors, 2)
    mu = sizes[:, None] * group_means[group]
    simulated = rng.negative_binomial(1 / dispersion, 1 / (1 + dispersion * mu))
    genes = [f"gene_{i:03d}" for i in range(simulated.shape[1])]
    samples = [f"{label}{i}" for label in ("untreated", "treated") for i in range(PER_GROUP)]
    table = pd.DataFrame(simulated, index=samples, columns=genes)
    for gene, sample in PLANTED.items():
        table.iloc[sample, table.columns.get_loc(gene)] *= OUTLIER_FACTOR
    single = np.zeros(len(samples), np.int64)
    single[4] = 150
    table[EMPTIED] = single
    labels = np.where(group == 1, "treated", "untreated")
    return table, pd.DataFrame({"condition": labels}, index=samples)


@pytest.fixture(scope="module")
def data():
    return _simulated_counts()


@pytest.fixture(scope="module")
def peer(data):
    counts, metadata = data
    dds, stats = run_pydeseq2(counts, metadata, FORMULA, CONTRAST)
    return dds, stats.results_df


@pytest.fixture(scope="module")
def ours(data):
    counts, metadata = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CooksRefitWarning)
        return zoo.differential_expression(counts, metadata, FORMULA, CONTRAST)


def _fit(counts, design, **settings):
    config = zoo.DifferentiableNBGLMConfig(
        n_genes=counts.shape[1], n_coefficients=design.shape[1], **settings
    )
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", CooksRefitWarning)
        return zoo.fit_nbglm(counts.to_numpy(np.float64), design, config)


def test_the_planted_outliers_are_replaced_as_pydeseq2_replaces_them(data, peer):
    counts, metadata = data
    dds, _ = peer
    fit = _fit(counts, design_matrix(metadata, FORMULA).matrix)
    refitted = set(counts.columns[np.asarray(fit.refitted)])
    peer_replaced = set(counts.columns[dds.var["replaced"].to_numpy()])
    assert set(PLANTED) <= refitted
    assert refitted | {EMPTIED} == peer_replaced, (refitted, peer_replaced)


def test_the_emptied_gene_is_left_untested(ours):
    """Replacement leaves no count: DESeq2 reports no statistics (pydeseq2 a zero fold
    change instead)."""
    assert ours.loc[EMPTIED, "baseMean"] == 0
    assert ours.loc[EMPTIED, ["log2FoldChange", "pvalue", "padj"]].isna().all()


def test_refitted_genes_match_pydeseq2(data, ours, peer):
    counts, _ = data
    dds, results = peer
    genes = counts.columns[dds.var["refitted"].to_numpy()]
    assert set(PLANTED) <= set(genes)
    np.testing.assert_allclose(
        ours.loc[genes, "baseMean"], results.loc[genes, "baseMean"], rtol=1e-10
    )
    np.testing.assert_allclose(
        ours.loc[genes, "log2FoldChange"], results.loc[genes, "log2FoldChange"], atol=LFC_ATOL
    )
    np.testing.assert_allclose(
        ours.loc[genes, "pvalue"], results.loc[genes, "pvalue"], rtol=PVALUE_RTOL
    )
    both = (ours.loc[genes, "padj"] < 0.5) & (results.loc[genes, "padj"] < 0.5)
    np.testing.assert_allclose(
        ours.loc[genes[both], "padj"], results.loc[genes[both], "padj"], rtol=PVALUE_RTOL
    )


def test_untested_genes_match_pydeseq2(ours, peer):
    """After the refit the same genes (none of the planted ones) lack a p-value."""
    _, results = peer
    untested = ours["pvalue"].isna().drop(EMPTIED)
    assert np.array_equal(untested, results["pvalue"].isna().drop(EMPTIED))
    assert not untested[list(PLANTED)].any()


def test_without_the_refit_the_planted_genes_differ(data, ours):
    """Without replacement Cook's filter sets the planted genes aside, and without that
    filter their fold changes are the outlier's: at least 0.3 log2 units from the refit."""
    counts, metadata = data
    kept = zoo.differential_expression(counts, metadata, FORMULA, CONTRAST, refit_cooks=False)
    assert kept.loc[list(PLANTED), "pvalue"].isna().all()
    unfiltered = zoo.differential_expression(
        counts, metadata, FORMULA, CONTRAST, refit_cooks=False, cooks_filter=False
    )
    planted = list(PLANTED)
    change = unfiltered.loc[planted, "log2FoldChange"] - ours.loc[planted, "log2FoldChange"]
    assert (np.abs(change) >= 0.3).all(), change


def test_every_fit_path_warns_of_the_replacement(data):
    counts, metadata = data
    design = design_matrix(metadata, FORMULA).matrix
    config = zoo.DifferentiableNBGLMConfig(n_genes=counts.shape[1], n_coefficients=2)
    message = f"{len(PLANTED) + 1} genes"
    with pytest.warns(CooksRefitWarning, match=message):
        zoo.differential_expression(counts, metadata, FORMULA, CONTRAST)
    with pytest.warns(CooksRefitWarning, match=message):
        zoo.DifferentiableNBGLM(config).fit(counts.to_numpy(), design)
    with pytest.warns(CooksRefitWarning, match=message), jax.enable_x64(True):
        zoo.fit_nbglm(counts.to_numpy(np.float64), design, config)
