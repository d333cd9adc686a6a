"""The downstream suite's quick preset on a DNA and a cell task (and one left out for want
of its data), and its bootstrap metrics."""

from __future__ import annotations

import json

import numpy as np
from sklearn import metrics

from benchmarks import downstream
from benchmarks.bootstrap import METRICS, bootstrap_metrics, metric_values
from benchmarks.downstream_dna_tasks import planted_jaspar


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = metric_values(y, p)
    assert np.isclose(ours["mcc"], metrics.matthews_corrcoef(y, p.argmax(1)))
    assert np.isclose(ours["macro_f1"], metrics.f1_score(y, p.argmax(1), average="macro"))
    assert np.isclose(ours["auroc"], metrics.roc_auc_score(y, p, multi_class="ovr"))
    estimates = bootstrap_metrics(y, p, n_resamples=200)
    assert all(e.low < e.value < e.high for e in estimates.values())


def test_planted_jaspar_plants_one_motif_per_labelled_sequence():
    task = planted_jaspar("random", "easy", {"train": 50, "validation": 10, "test": 10})
    assert task.classes[0] == "none" and len(task.classes) == 5
    assert all(len(s) == 200 for s in task.train.inputs)
    assert np.bincount(task.train.labels).tolist() == [10] * 5


def test_quick_suite_has_every_row_and_the_easy_baseline_works(shared_data, tmp_path, capsys):
    tasks = ["planted-TGACTCA", "pbmc3k-10-labels", "enhancers"]
    models = ["6-mer LR", "HVG PCA + LR"]
    argv = ["--quick", "--train", "2000", "--no-progress", "--out", str(tmp_path)]
    argv += ["--annotation", str(tmp_path / "absent")]  # the enhancer task is left out
    rows = downstream.main([*argv, "--tasks", *tasks, "--models", *models])
    pairs = [(r["task"], r["model"]) for r in rows]
    assert pairs == [
        ("planted-TGACTCA", "6-mer LR"),
        ("pbmc3k-10-labels", "HVG PCA + LR"),
    ]
    for row in rows:
        for metric in METRICS:
            value, low, high = row[metric]
            assert low <= value <= high, (row["task"], row["model"], metric)
    by_pair = dict(zip(pairs, rows, strict=True))
    assert by_pair[("planted-TGACTCA", "6-mer LR")]["mcc"][0] > 0.8
    assert by_pair[("pbmc3k-10-labels", "HVG PCA + LR")]["n_train"] == 90
    table = (tmp_path / "downstream.md").read_text()
    assert all(f"| {t} | {m} |" in table for t, m in pairs)
    assert (tmp_path / "downstream.png").stat().st_size > 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["name"] == "downstream" and len(summary["rows"]) == 2
    assert "no UCSC/FANTOM5 tracks" in summary["left_out"]["enhancers"]
    assert "left out enhancers" in table
