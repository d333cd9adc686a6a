"""Formulaic designs beyond main effects, against pydeseq2 on the real pasilla and airway
tables: an interaction (pasilla ``~ condition * type``), a continuous covariate (pasilla
``~ depth + condition``, ``depth`` the centred log library size of each sample, as no table
ships a numeric covariate), an explicit reference level (airway ``~ cell + C(dex,
contr.treatment('trt'))``, tested against ``untrt``, which is then not the design's reference),
and a contrast of two non-reference levels (airway ``cell``).

To stay fast each runs on a few hundred genes: every 25th of pasilla (584), every 100th of
airway (641, about half of them counted). Tolerances: design matrix, column names and
contrast vector equal to pydeseq2's; log2 fold changes Pearson >= 0.99 on genes with
baseMean >= 10 (as in test_nbglm.py); p-values Spearman >= 0.98 on the genes both tested;
padj Jaccard >= 0.9 between the padj < 0.05 sets, of at least 5 genes (8 for the interaction,
with 3 residual degrees of freedom; the dispersions differ slightly, as in
test_nbglm.py, so values are compared by rank and set, not one by one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from deseq2_peer import run_pydeseq2

import zoo
from pretraining.bulk_counts import airway, pasilla
from zoo.deseq2.design import design_matrix

pytestmark = pytest.mark.filterwarnings("ignore:As the residual degrees of freedom")


def _pasilla_with_depth():
    counts, metadata = pasilla()
    log_depth = np.log(counts.sum(axis=1))
    return counts.iloc[:, ::25], metadata.assign(depth=log_depth - log_depth.mean())


def _airway():
    counts, metadata = airway()
    return counts.iloc[:, ::100], metadata


PASILLA_CONTRAST = ("condition", "treated", "untreated")
CASES = {
    "interaction": (_pasilla_with_depth, "~ condition * type", PASILLA_CONTRAST),
    "covariate": (_pasilla_with_depth, "~ depth + condition", PASILLA_CONTRAST),
    "reference": (_airway, "~ cell + C(dex, contr.treatment('trt'))", ("dex", "trt", "untrt")),
    "level_pair": (_airway, "~ cell + dex", ("cell", "N061011", "N080611")),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def comparison(request):
    """pydeseq2's data set and results, and ours, for one design."""
    loader, formula, contrast = CASES[request.param]
    counts, metadata = loader()
    dds, stats = run_pydeseq2(counts, metadata, formula, contrast)
    ours = zoo.differential_expression(counts, metadata, formula, contrast)
    design = design_matrix(metadata, formula)
    return {"dds": dds, "stats": stats, "ours": ours, "design": design, "contrast": contrast}


def test_design_matches_pydeseq2(comparison):
    peer = comparison["dds"].obsm["design_matrix"]
    design = comparison["design"]
    assert design.columns == tuple(peer.columns)
    np.testing.assert_array_equal(design.matrix, peer.to_numpy(np.float64))


def test_contrast_vector_matches_pydeseq2(comparison):
    ours = comparison["design"].contrast(*comparison["contrast"])
    np.testing.assert_array_equal(ours, np.asarray(comparison["stats"].contrast_vector, float))


def test_log2_fold_changes_correlate(comparison):
    ours, peer = comparison["ours"], comparison["stats"].results_df
    keep = peer["baseMean"] >= 10
    r = np.corrcoef(ours.loc[keep, "log2FoldChange"], peer.loc[keep, "log2FoldChange"])[0, 1]
    assert keep.sum() >= 100 and r >= 0.99, (keep.sum(), r)


def test_pvalues_rank_alike(comparison):
    ours, peer = comparison["ours"], comparison["stats"].results_df
    both = ours["pvalue"].notna() & peer["pvalue"].notna()
    rho = scipy.stats.spearmanr(ours.loc[both, "pvalue"], peer.loc[both, "pvalue"]).statistic
    assert both.sum() >= 100 and rho >= 0.98, (both.sum(), rho)


def test_significant_sets_overlap(comparison):
    ours, peer = comparison["ours"], comparison["stats"].results_df
    ours_set = set(ours.index[ours["padj"] < 0.05])
    peer_set = set(peer.index[peer["padj"] < 0.05])
    jaccard = len(ours_set & peer_set) / len(ours_set | peer_set)
    assert len(peer_set) >= 5 and jaccard >= 0.9, (len(ours_set), len(peer_set), jaccard)


def test_moving_the_reference_level_keeps_the_results():
    """Moving dex's reference renames and negates its coefficient; the test of trt over
    untrt is the same (to the solvers' tolerance)."""
    counts, metadata = _airway()
    default = zoo.differential_expression(counts, metadata, "~ cell + dex", ("dex", "trt", "untrt"))
    moved = zoo.differential_expression(
        counts, metadata, "~ cell + C(dex, contr.treatment('trt'))", ("dex", "trt", "untrt")
    )
    pd.testing.assert_frame_equal(default, moved, rtol=1e-5, atol=1e-8)
