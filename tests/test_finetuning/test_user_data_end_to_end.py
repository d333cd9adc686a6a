"""A new user's four commands on their own small files, with the published checkpoints:
``biozoo embed``, ``finetune``, ``predict`` and ``evaluate`` on a labelled TSV of DNA and on
an .h5ad of cells; and a regression fine-tune from Python."""

import json

import anndata
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

import checkpoints
import finetuning
from checkpoints.catalog import CATALOG
from finetuning.cli import main
from finetuning.regression_metrics import regression_report
from finetuning.train import FineTuneConfig
from finetuning.user_splits import drawn_splits

TINY = ["--steps", "2", "--eval-every", "1", "--batch-size", "8"]


def random_dna(rng, n, length):
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


@pytest.fixture(scope="module")
def dna_table(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("dna")
    table = pd.DataFrame(
        {
            "id": [f"seq{i}" for i in range(30)],
            "sequence": random_dna(rng, 30, 40),
            "label": ["bound", "unbound", "unbound"] * 10,
        }
    )
    table.to_csv(folder / "peaks.tsv", sep="\t", index=False)
    return folder, table


def test_dna_tsv_embed_finetune_predict_evaluate(dna_table):
    folder, table = dna_table
    data = str(folder / "peaks.tsv")
    names = ["--name-column", "id"]

    assert main(["embed", "dna-encoder-tiny", data, "--out", str(folder / "e.npy"), *names]) == 0
    embeddings = np.load(folder / "e.npy")
    sidecar = json.loads((folder / "e.json").read_text())
    assert sidecar["names"] == table["id"].tolist()
    assert sidecar["provenance"]["model"] == "dna-encoder-tiny"
    assert set(sidecar["provenance"]["sha256"]) == {"config.json", "model.safetensors"}
    model = eqx.nn.inference_mode(checkpoints.from_pretrained("dna-encoder-tiny"))
    ids, mask = model.tokenizer(table["sequence"].tolist()[:3])  # unpadded, independently
    expected = jax.vmap(model)(ids, mask).pooled
    np.testing.assert_allclose(embeddings[:3], expected, atol=1e-5)  # float32 sums

    per_token = folder / "t.npz"
    assert main(["embed", "dna-encoder-tiny", data, "--out", str(per_token), "--per-token"]) == 0
    with np.load(per_token) as saved:
        assert np.array_equal(np.diff(saved["offsets"]), [41] * 30)  # [CLS] + 40 letters
        first = saved["embeddings"][: saved["offsets"][1]]
    np.testing.assert_allclose(first, jax.vmap(model)(ids, mask).hidden[0], atol=1e-5)

    out = folder / "model"
    assert (
        main(
            [
                "finetune",
                "--train",
                data,
                "--base",
                "dna-encoder-tiny",
                *names,
                *TINY,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    assert sorted(splits["id"]) == sorted(table["id"])
    counts = splits["split"].value_counts().to_dict()
    assert counts == {"train": 24, "validation": 3, "test": 3}  # 10 % + 10 % of 30
    assert (out / "confusion_matrix.png").is_file()

    predictions = folder / "predictions.csv"
    assert main(["predict", str(out), data, "--out", str(predictions), *names]) == 0
    predicted = pd.read_csv(predictions)
    assert predicted["name"].tolist() == table["id"].tolist()
    probabilities = predicted[["probability_bound", "probability_unbound"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)

    metrics_file = folder / "evaluation" / "metrics.json"
    assert main(["evaluate", str(out), data, "--out", str(metrics_file)]) == 0
    report = json.loads(metrics_file.read_text())
    accuracy = metrics.accuracy_score(table["label"], predicted["prediction"])
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert report["n"] == 30
    assert (metrics_file.parent / "confusion_matrix.png").is_file()


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory):
    """Cells over the model's genes, written in another order and case than the model's
    ``genes.tsv`` and without 100 of them, so the file is read through gene matching;
    `counts` are the same cells in the model's gene order, zeros for the missing genes."""
    genes = checkpoints.read_genes(CATALOG["fm-pbmc3k-tiny"].shipped_folder()).symbols
    n_genes = len(genes)
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.5, (24, n_genes)).astype(np.float32)
    counts[:12, :50] += rng.poisson(5.0, (12, 50))  # type A cells express the first genes
    kept = rng.permutation(n_genes)[: n_genes - 100]
    counts[:, np.setdiff1d(np.arange(n_genes), kept)] = 0
    in_file = counts[:, kept]
    adata = anndata.AnnData(np.zeros_like(in_file), layers={"counts": in_file})
    adata.obs_names = [f"cell{i}" for i in range(24)]
    adata.var_names = [genes[i].lower() for i in kept]
    adata.obs["kind"] = ["A"] * 12 + ["B"] * 12
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    adata.write_h5ad(path)
    return path, counts


def test_h5ad_embed_finetune_predict_evaluate(cells_file):
    path, counts = cells_file
    folder = path.parent
    cells = ["--layer", "counts", "--label-key", "kind"]

    copy = folder / "embedded.h5ad"
    assert (
        main(["embed", "fm-pbmc3k-tiny", str(path), "--out", str(copy), "--layer", "counts"]) == 0
    )
    embedded = anndata.read_h5ad(copy)
    assert embedded.obsm["X_biozoo"].shape == (24, 64)
    assert embedded.uns["biozoo"]["model"] == "fm-pbmc3k-tiny"
    original = anndata.read_h5ad(path)
    np.testing.assert_array_equal(embedded.layers["counts"], original.layers["counts"])
    model = eqx.nn.inference_mode(checkpoints.from_pretrained("fm-pbmc3k-tiny"))
    no_mask = jnp.zeros(model.config.tokenizer.max_tokens, bool)
    for cell in (0, 12):  # the model sees the cells in its own gene order
        expected = model(jnp.asarray(counts[cell]), expression_mask=no_mask).cell_embedding
        np.testing.assert_allclose(embedded.obsm["X_biozoo"][cell], expected, atol=1e-5)

    out = folder / "model"
    assert (
        main(
            [
                "finetune",
                "--train",
                str(path),
                "--base",
                "fm-pbmc3k-tiny",
                *cells,
                *TINY,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert checkpoints.read_genes(out) == checkpoints.read_genes(
        CATALOG["fm-pbmc3k-tiny"].shipped_folder()
    )  # the fine-tuned model keeps its genes, so predict matches the file's again
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    test_ids = splits.loc[splits["split"] == "test", "id"]
    kinds = pd.Series(["A"] * 12 + ["B"] * 12, index=[f"cell{i}" for i in range(24)])
    assert len(test_ids) == 3 and set(kinds[test_ids]) == {"A", "B"}  # ceil(10 %), stratified

    predicted = folder / "predicted.h5ad"
    assert main(["predict", str(out), str(path), "--out", str(predicted), "--layer", "counts"]) == 0
    obs = anndata.read_h5ad(predicted).obs
    assert set(obs["biozoo_prediction"]) <= {"A", "B"}
    np.testing.assert_allclose(
        obs["biozoo_probability_A"] + obs["biozoo_probability_B"], 1, atol=1e-6
    )

    metrics_file = folder / "metrics.tsv"
    assert main(["evaluate", str(out), str(path), *cells, "--out", str(metrics_file)]) == 0
    report = pd.read_csv(metrics_file, sep="\t").set_index("metric")["value"]
    accuracy = metrics.accuracy_score(kinds, obs["biozoo_prediction"])
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert (folder / "confusion_matrix.png").is_file()


def test_regression_from_python(dna_table, tmp_path):
    _, table = dna_table
    table = table.assign(label=[s.count("G") + s.count("C") for s in table["sequence"]])
    config = FineTuneConfig(max_steps=2, eval_every=1, warmup_steps=0, batch_size=8)
    result, folder = finetuning.finetune(
        table,
        base="dna-encoder-tiny",
        out=tmp_path / "m",
        target="regression",
        config=config,
        progress=False,
    )
    assert set(result.test) == {"mse", "pearson", "spearman"}
    assert result.model.config.target_mean == pytest.approx(np.mean(table["label"]), rel=0.2)
    assert (folder / "scatter.png").is_file()
    predicted = finetuning.predict(folder, table, progress=False)
    report = finetuning.evaluate(folder, table, out=tmp_path / "metrics.json", progress=False)
    assert report["mse"] == pytest.approx(
        np.mean((predicted["prediction"] - table["label"]) ** 2), rel=1e-6
    )
    assert (tmp_path / "scatter.png").is_file()


def test_regression_metrics_on_a_worked_example():
    # y = 1, 2, 3; predictions 1, 2, 4: errors 0, 0, 1 -> MSE 1/3; ranks agree -> rho 1;
    # r = cov / (sd_y sd_p) = 1.5 / sqrt(1 * 2.3333) = 0.98198
    report = regression_report(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert report["mse"] == pytest.approx(1 / 3, abs=1e-12)
    assert report["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert report["pearson"] == pytest.approx(0.9819805060619657, abs=1e-12)
    assert np.isnan(regression_report(np.ones(3), np.array([1.0, 2.0, 3.0]))["pearson"])


def test_drawn_splits_repeat_with_the_seed_and_keep_each_class():
    labels = np.array([0] * 20 + [1] * 20)
    first = drawn_splits(labels, 40, seed=3)
    assert np.array_equal(first, drawn_splits(labels, 40, seed=3))
    for split in ("validation", "test"):
        assert sorted(labels[first == split]) == [0, 0, 1, 1]
