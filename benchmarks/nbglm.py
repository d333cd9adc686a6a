"""DESeq2 fit + Wald test on the full pasilla (``~condition``) and airway (``~cell + dex``)
tables: `zoo.differential_expression` against pydeseq2 (its defaults, all CPU cores), same
data, same run.

Ours is timed on its first call in this process (which includes compilation; each table's
shapes compile anew) and warm (the best of `REPEATS` further calls); pydeseq2 once per
table. Agreement with pydeseq2 uses the issue's measures: Pearson of log2 fold changes over
genes with baseMean >= 10, Spearman of the final dispersions, and the Jaccard index of the
padj < 0.05 gene sets. The last line printed is a JSON object.
"""

from __future__ import annotations

import json
import time
import warnings

import jax
import numpy as np
import pydeseq2
import scipy.stats
from pydeseq2.dds import DeseqDataSet
from pydeseq2.ds import DeseqStats
from tqdm import tqdm

import zoo
from pretraining.bulk_counts import airway, pasilla
from zoo.deseq2.design import design_matrix
from zoo.deseq2.model import fit_expressed

REPEATS = 3
EXPERIMENTS = {
    "pasilla": (pasilla, "~condition", ("condition", "treated", "untreated")),
    "airway": (airway, "~cell + dex", ("dex", "trt", "untrt")),
}


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def run_pydeseq2(counts, metadata, formula, contrast):
    """pydeseq2's ``deseq2()`` and ``summary()``: (results, final dispersions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its small-dof prior warning
        dds = DeseqDataSet(counts=counts, metadata=metadata, design=formula, quiet=True)
        dds.deseq2()
        stats = DeseqStats(dds, contrast=list(contrast), quiet=True)
        stats.summary()
    return stats.results_df, dds.var["dispersions"].to_numpy()


def agreement(ours, peer, our_dispersions, peer_dispersions) -> dict[str, float]:
    keep = peer["baseMean"] >= 10
    pearson = np.corrcoef(ours.loc[keep, "log2FoldChange"], peer.loc[keep, "log2FoldChange"])
    fitted = np.isfinite(peer_dispersions)
    spearman = scipy.stats.spearmanr(our_dispersions[fitted], peer_dispersions[fitted])
    ours_set = set(ours.index[ours["padj"] < 0.05])
    peer_set = set(peer.index[peer["padj"] < 0.05])
    return {
        "lfc_pearson": float(pearson[0, 1]),
        "dispersion_spearman": float(spearman.statistic),
        "padj_jaccard": len(ours_set & peer_set) / len(ours_set | peer_set),
        "n_significant_ours": len(ours_set),
        "n_significant_peer": len(peer_set),
    }


def benchmark(name: str) -> dict:
    loader, formula, contrast = EXPERIMENTS[name]
    counts, metadata = loader()

    def ours():
        return zoo.differential_expression(counts, metadata, formula, contrast)

    first_s, results = timed(ours)
    warm_s = min(timed(ours)[0] for _ in range(REPEATS))
    peer_s, (peer_results, peer_dispersions) = timed(
        run_pydeseq2, counts, metadata, formula, contrast
    )
    design = design_matrix(metadata, formula)
    config = zoo.DifferentiableNBGLMConfig(
        n_genes=counts.shape[1], n_coefficients=design.matrix.shape[1]
    )
    with jax.enable_x64(True):
        fit = fit_expressed(counts.to_numpy(np.float64), design.matrix, config)
        dispersions = np.asarray(fit.dispersions)
    return {
        "genes": counts.shape[1],
        "samples": counts.shape[0],
        "ours_first_s": first_s,
        "ours_warm_s": warm_s,
        "compile_s": first_s - warm_s,
        "peer_s": peer_s,
        "speedup_warm": peer_s / warm_s,
        "speedup_first": peer_s / first_s,
        **agreement(results, peer_results, dispersions, peer_dispersions),
    }


def main() -> None:
    per_table = {}
    for name in tqdm(EXPERIMENTS, desc="tables"):
        per_table[name] = benchmark(name)
        print(name, json.dumps(per_table[name]), flush=True)
    ours_s = sum(r["ours_warm_s"] for r in per_table.values())
    first_s = sum(r["ours_first_s"] for r in per_table.values())
    peer_s = sum(r["peer_s"] for r in per_table.values())
    summary = {
        "name": "nbglm",
        "ours_s": ours_s,
        "peer": f"pydeseq2 {pydeseq2.__version__}",
        "peer_s": peer_s,
        "speedup": peer_s / ours_s,
        "ours_first_s": first_s,
        "compile_s": first_s - ours_s,
        "speedup_first": peer_s / first_s,
        "min_lfc_pearson": min(r["lfc_pearson"] for r in per_table.values()),
        "min_dispersion_spearman": min(r["dispersion_spearman"] for r in per_table.values()),
        "min_padj_jaccard": min(r["padj_jaccard"] for r in per_table.values()),
        "tables": per_table,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
