"""A few hundred steps of the tiny preset on real data learn something: DNA validation loss
falls well below log 4 and below the base-composition entropy of the held-out DNA;
masked-expression validation error falls below a per-gene-mean predictor. The exported
folder loads with `zoo.from_pretrained`, its card records the run, and an expression
model's folder carries its corpus's genes (``genes.tsv``)."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import anndata
import jax
import jax.numpy as jnp
import numpy as np

import zoo
from checkpoints import read_genes
from pretraining.dna_data import TRAIN, VALIDATION
from pretraining.optimizer import OptimizerConfig
from pretraining.run_config import RunConfig
from pretraining.sources import dataset
from pretraining.train import EXPORT_DIR, METRICS_FILE, Run, read_metrics

ROOT = Path(__file__).resolve().parents[2]


def final_validation(out: Path) -> float:
    records = read_metrics(out / METRICS_FILE)
    return [r for r in records if r["kind"] == "validation"][-1]["loss"]


def check_export(folder: Path, task_words: str):
    model = zoo.from_pretrained(folder)
    card = (folder / "README.md").read_text()
    summary = json.loads((folder / "training_summary.json").read_text())
    assert (folder / "loss_curve.png").stat().st_size > 10_000
    assert summary["steps"] == 300
    for words in ("SHA-256", "final validation loss", "hardware", "library_name: biozoo"):
        assert words in card, words
    assert task_words in card
    return model


def composition_entropy(fasta_gz: Path, held_out: float) -> float:
    """Entropy (nats) of the A/C/G/T frequencies of the last `held_out` of the sequence."""
    with gzip.open(fasta_gz, "rt") as f:
        sequence = "".join(line.strip() for line in f if not line.startswith(">")).upper()
    tail = np.frombuffer(sequence[-round(held_out * len(sequence)) :].encode(), np.uint8)
    counts = np.array([np.count_nonzero(tail == ord(b)) for b in "ACGT"], float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_tiny_dna_model_learns_human_chrX(tmp_path):
    out = tmp_path / "dna"
    command = [
        sys.executable, "-m", "pretraining", "dna", "human-chrX-70Mb", "--preset", "tiny",
        "--seq-len", "64", "--batch-size", "32", "--steps", "300", "--lr", "5e-3",
        "--warmup", "30", "--dropout", "0", "--eval-every", "0", "--eval-batches", "8",
        "--save-every", "0", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    loss = final_validation(out)
    baseline = composition_entropy(dataset("human-chrX-70Mb", quiet=True), 0.05)
    # uniform: log 4 = 1.386; base composition of the held-out DNA: about 1.36
    assert loss < math.log(4) - 0.05, loss
    assert loss < baseline - 0.02, (loss, baseline)
    check_export(out / EXPORT_DIR, "human-chrX-70Mb")
    assert read_genes(out / EXPORT_DIR) is None, "a DNA model has no gene vocabulary"


def test_tiny_foundation_model_learns_pbmc3k(tmp_path, shared_data):
    os.environ.setdefault("BIOZOO_SHARED_DATA", str(shared_data))
    run = RunConfig(
        task="expression", data=("pbmc3k",), preset="tiny", max_tokens=64, batch_size=32,
        steps=300, dropout=0.0, eval_every=0, eval_batches=8, save_every=0,
        optimizer=OptimizerConfig(learning_rate=5e-3, warmup_steps=30),
    )  # fmt: skip
    trainer = Run(run, tmp_path)
    trainer.train(progress=False)
    loss = final_validation(tmp_path)

    # Baselines without context, from the same tokens: the mean value of each gene's
    # training tokens, and the mean of all training tokens.
    corpus = trainer.task.corpus
    tokenizer = trainer.task.model.tokenizer

    def tokens(part):
        t = jax.vmap(tokenizer)(jnp.asarray(corpus.read(part, range(len(corpus.cells[part])))))
        return np.asarray(t.ids)[np.asarray(t.mask)], np.asarray(t.values)[np.asarray(t.mask)]

    train_ids, train_values = tokens(TRAIN)
    val_ids, val_values = tokens(VALIDATION)
    sums = np.bincount(train_ids, train_values, minlength=val_ids.max() + 1)
    counts = np.bincount(train_ids, minlength=val_ids.max() + 1)
    gene_mean = np.where(counts > 0, sums / np.maximum(counts, 1), train_values.mean())
    per_gene = np.mean((val_values - gene_mean[val_ids]) ** 2)
    overall = np.mean((val_values - train_values.mean()) ** 2)
    assert loss < per_gene < overall, (loss, per_gene, overall)
    assert loss < 0.5 * overall

    model = check_export(tmp_path / EXPORT_DIR, "pbmc3k")
    # The folder carries its gene vocabulary: pbmc3k's var_names (symbols), in column order.
    genes = read_genes(tmp_path / EXPORT_DIR)
    var_names = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad", backed="r").var_names
    assert genes is not None and genes.names() == tuple(var_names)
    assert genes.symbols == tuple(var_names) and not any(genes.gene_ids)
    np.testing.assert_array_equal(model.tokenizer.gene_medians, tokenizer.gene_medians)
