"""`VAENormalizer` against scvi-tools' SCVI: time per epoch and held-out ELBO, same run.

1. pbmc_3chem (2,000 PBMCs x 10,000 genes, three 10x chemistries as batches): for each seed
   both models are trained on the same 90% of cells with the same architecture (ZINB, gene
   dispersion, 128 hidden units, 10 latent dimensions, one layer, layer norm, no batch
   norm), optimiser (Adam, lr 1e-3, eps 0.01, weight decay 1e-6), minibatch size, epochs and
   KL warm-up. Reported: seconds per epoch (ours after compilation, which is reported
   separately; scvi-tools' from epoch start to end, without its setup), the held-out ELBO
   (scvi-tools' ``get_elbo`` definition), leave-one-out kNN (k=15) cell-type accuracy and
   iLISI-style batch mixing (k=15) of the latent means.
2. pbmc3k (2,638 PBMCs x 2,000 genes, 9 cell types): the same per seed (no batches); a PNG
   of both latent spaces of seed 0 (UMAP of the latent means, umap-learn) coloured by cell
   type is written to ``benchmarks/figures/vae_pbmc3k.png``.

Each score is reported as its mean, standard deviation over seeds and per-seed values: the
seed moves both tools' latent spaces (kNN accuracy by about 0.01, batch mixing by several
hundredths), so one seed cannot tell them apart.

Run with ``python -m benchmarks.vae [--seeds N] [--epochs N]``; the last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import anndata
import jax
import numpy as np
from tqdm import tqdm

import zoo
from finetuning.embedding_metrics import batch_mixing, knn_accuracy
from zoo.vae.fit import cell_elbo, latent_mean, read_batches, read_counts
from zoo.vae.training import train_vae

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIGURE = Path(__file__).resolve().parent / "figures" / "vae_pbmc3k.png"
ARCHITECTURE = {"n_hidden": 128, "n_latent": 10, "n_layers": 1}
LIKELIHOOD = "zinb"
BATCH_SIZE = 128


def split(adata: anndata.AnnData, held_out: float = 0.1, seed: int = 0):
    """The same training and held-out cells for both tools."""
    rows = np.random.default_rng(seed).permutation(adata.n_obs)
    n_test = int(held_out * adata.n_obs)
    return adata[np.sort(rows[n_test:])].copy(), adata[np.sort(rows[:n_test])].copy()


def run_ours(train, test, batch_key, epochs, warmup, seed) -> dict:
    """Fit ours; time the epochs after compiling the training step on one epoch."""
    counts = read_counts(train)
    labels, batches = read_batches(train, batch_key)
    config = zoo.VAENormalizerConfig(
        n_genes=train.n_vars, batch_labels=labels, likelihood=LIKELIHOOD, **ARCHITECTURE
    )
    model = zoo.VAENormalizer(config, key=jax.random.key(seed))
    training = zoo.VAETrainingConfig(epochs=epochs, batch_size=BATCH_SIZE, kl_warmup_epochs=warmup)
    start = time.perf_counter()
    train_vae(model, counts, batches, zoo.VAETrainingConfig(epochs=1), key=jax.random.key(0))
    first_epoch = time.perf_counter() - start
    start = time.perf_counter()
    model, _ = train_vae(model, counts, batches, training, key=jax.random.key(seed + 1))
    per_epoch = (time.perf_counter() - start) / epochs
    return {
        "s_per_epoch": per_epoch,
        "compile_s": first_epoch - per_epoch,
        "elbo": float(cell_elbo(model, test, key=jax.random.key(7), batch_key=batch_key).mean()),
        "latent": latent_mean(model, anndata.concat([train, test]), batch_key=batch_key),
    }


def run_scvi(train, test, batch_key, epochs, warmup, seed) -> dict:
    """Fit scvi-tools' SCVI with the same settings; time its epochs with a callback."""
    import lightning.pytorch as pl
    import scvi

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.start)

    scvi.settings.verbosity = logging.ERROR
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    model = scvi.model.SCVI(
        train,
        gene_likelihood=LIKELIHOOD,
        dispersion="gene",
        use_layer_norm="both",
        use_batch_norm="none",
        **ARCHITECTURE,
    )
    timer = EpochTimer()
    model.train(
        max_epochs=epochs,
        train_size=1.0,
        batch_size=BATCH_SIZE,
        plan_kwargs={"n_epochs_kl_warmup": warmup},
        accelerator="cpu",
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    return {
        "s_per_epoch": float(np.mean(timer.seconds)),
        "elbo": float(model.get_elbo(test)),
        "latent": model.get_latent_representation(anndata.concat([train, test])),
    }


def latent_scores(run: dict, cells: anndata.AnnData) -> dict:
    scores = {"knn_accuracy": knn_accuracy(run["latent"], cells.obs["cell_type"].to_numpy())}
    if "batch" in cells.obs:
        scores["batch_mixing"] = batch_mixing(run["latent"], cells.obs["batch"].to_numpy())
    return scores


def compare(adata: anndata.AnnData, batch_key, args) -> tuple[dict, anndata.AnnData]:
    """Per seed, both tools on the same split; their scores and latent means per seed."""
    train, test = split(adata)
    cells = anndata.concat([train, test])
    rows = {"ours": [], "peer": []}
    for seed in tqdm(range(args.seeds), desc=f"seeds ({adata.n_vars} genes)"):
        for name, run in (("ours", run_ours), ("peer", run_scvi)):
            result = run(train, test, batch_key, args.epochs, args.warmup, seed)
            result.update(latent_scores(result, cells))
            rows[name].append(result)
            print(name, seed, {k: v for k, v in result.items() if k != "latent"}, flush=True)
    return rows, cells


def summary(rows: dict, field: str, prefix: str = "") -> dict:
    """Mean, standard deviation (ddof 1) and per-seed values of `field` for both tools."""
    out = {}
    for name, tag in (("ours", ""), ("peer", "peer_")):
        values = [r[field] for r in rows[name]]
        out[f"{tag}{prefix}{field}"] = float(np.mean(values))
        out[f"{tag}{prefix}{field}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[f"{tag}{prefix}{field}_per_seed"] = [round(v, 4) for v in values]
    return out


def draw_figure(cells: anndata.AnnData, ours: np.ndarray, peer: np.ndarray, titles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    cell_types = cells.obs["cell_type"].astype("category")
    colours = plt.get_cmap("tab10")(cell_types.cat.codes.to_numpy() % 10)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, latent, title in zip(axes, (ours, peer), titles, strict=True):
        xy = umap.UMAP(random_state=0).fit_transform(latent)
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=3, linewidths=0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=plt.get_cmap("tab10")(i % 10), label=name)
        for i, name in enumerate(cell_types.cat.categories)
    ]
    fig.legend(handles=handles, loc="center right", frameon=False)
    fig.subplots_adjust(right=0.83)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=20, help="KL warm-up epochs")
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="run both tools on one CPU thread (fairer on a shared, loaded machine)",
    )
    args = parser.parse_args()
    import scvi
    import torch

    if args.single_thread:  # read when JAX's CPU backend starts, i.e. at its first use
        os.environ["XLA_FLAGS"] = (
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    threads = 1 if args.single_thread else os.cpu_count()
    torch.set_num_threads(threads)

    chem, _ = compare(anndata.read_h5ad(DATA / "pbmc_3chem_counts.h5ad"), "batch", args)
    pbmc3k, cells3k = compare(anndata.read_h5ad(DATA / "pbmc3k_2000hvg_counts.h5ad"), None, args)
    ours3k, peer3k = pbmc3k["ours"][0], pbmc3k["peer"][0]
    draw_figure(
        cells3k,
        ours3k["latent"],
        peer3k["latent"],
        (
            f"zoo.VAENormalizer, seed 0 (kNN acc. {ours3k['knn_accuracy']:.3f})",
            f"scvi-tools SCVI, seed 0 (kNN acc. {peer3k['knn_accuracy']:.3f})",
        ),
    )
    ours_s = float(np.mean([r["s_per_epoch"] for r in chem["ours"]]))
    peer_s = float(np.mean([r["s_per_epoch"] for r in chem["peer"]]))
    elbo = summary(chem, "elbo")
    knn, mixing = summary(chem, "knn_accuracy"), summary(chem, "batch_mixing")
    knn3k = summary(pbmc3k, "knn_accuracy", "pbmc3k_")
    print(
        json.dumps(
            {
                "name": "vae",
                "ours_s": ours_s,
                "peer": f"scvi-tools {scvi.__version__}",
                "peer_s": peer_s,
                "speedup": peer_s / ours_s,
                "unit": "seconds per epoch, pbmc_3chem 1800 training cells x 10000 genes",
                "ours_compile_s": chem["ours"][0]["compile_s"],  # later seeds reuse it
                **elbo,
                "elbo_relative_difference": (elbo["elbo"] - elbo["peer_elbo"])
                / abs(elbo["peer_elbo"]),
                **knn,
                **mixing,
                **summary(pbmc3k, "elbo", "pbmc3k_"),
                **knn3k,
                # issue 4: ours may be lower than scvi-tools by at most 0.02 (kNN), 0.05 (mixing)
                "knn_accuracy_difference": knn["knn_accuracy"] - knn["peer_knn_accuracy"],
                "pbmc3k_knn_accuracy_difference": knn3k["pbmc3k_knn_accuracy"]
                - knn3k["peer_pbmc3k_knn_accuracy"],
                "batch_mixing_difference": mixing["batch_mixing"] - mixing["peer_batch_mixing"],
                "seeds": args.seeds,
                "epochs": args.epochs,
                "kl_warmup_epochs": args.warmup,
                "device": f"{jax.devices()[0].platform}, {os.cpu_count()} cores",
                "threads_per_tool": threads,
                "figure": str(FIGURE.relative_to(Path(__file__).resolve().parents[1])),
            }
        )
    )


if __name__ == "__main__":
    main()
