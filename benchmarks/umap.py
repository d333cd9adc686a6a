"""`zoo.DifferentiableUMAP` against umap-learn, same data, same run.

Data: pbmc3k (2,638 PBMCs, 9 cell types) and the 10,000 mouse cells, each as 50 principal
components of log-normalised counts (scanpy). Both tools use ``n_neighbors=15``,
``min_dist=0.1``. umap-learn is run once on the full pbmc3k before timing (numba compiles
its code on first use) and our fit is run once to compile (reported as ``compile_s``).
Reported: fit wall times, trustworthiness (k = 15, scikit-learn), 5-fold 2-D kNN (k = 15)
cell-type accuracy on pbmc3k (our default fit is the encoder's map, the one `transform`
applies; a fit refined by 500 free-coordinate steps is reported beside it with its drift from
that map, relative to the embedding's spread), and the time to embed 1,000 new pbmc3k cells
with a model fitted on the other 1,638 (with the held-out cells' kNN label accuracy against
the training embedding), and, on the mouse cells, the time of the exact and of the approximate
(pynndescent) 15-nearest-neighbour search with the recall of the approximate one against
scikit-learn's exact neighbours (pynndescent's numba compilation is excluded, as
``compile_s`` is). A figure of both pbmc3k embeddings goes to
``benchmarks/figures/umap_pbmc3k.png``.
The last line printed is a JSON object.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import anndata
import jax
import matplotlib
import numpy as np
import scanpy as sc
from sklearn.manifold import trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from umap import UMAP

from zoo import DifferentiableUMAP, DifferentiableUMAPConfig
from zoo.common.knn import knn
from zoo.umap.model import UMAPDriftWarning

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIGURE = Path(__file__).resolve().parent / "figures" / "umap_pbmc3k.png"
N_NEW = 1000


def principal_components(path: Path) -> anndata.AnnData:
    adata = anndata.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, random_state=0)
    return adata


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def fit_ours(x: np.ndarray, seed: int = 0, **config):
    model = DifferentiableUMAP(DifferentiableUMAPConfig(**config), key=jax.random.key(seed))
    return model.fit(x, key=jax.random.key(seed + 1), progress=False)


def fit_peer(x: np.ndarray) -> UMAP:
    return UMAP(n_neighbors=15, min_dist=0.1).fit(x)


def trust(x: np.ndarray, embedding: np.ndarray) -> float:
    return round(float(trustworthiness(x, embedding, n_neighbors=15)), 4)


def accuracy(embedding: np.ndarray, labels: np.ndarray) -> float:
    scores = cross_val_score(KNeighborsClassifier(15), embedding, labels, cv=5)
    return round(float(scores.mean()), 4)


def held_out_accuracy(train, train_labels, new, new_labels) -> float:
    classifier = KNeighborsClassifier(15).fit(train, train_labels)
    return round(float(classifier.score(new, new_labels)), 4)


def neighbour_search(x: np.ndarray) -> dict:
    """Exact vs approximate kNN (k = 15, self included) on `x`: seconds and recall."""
    knn(x[:500], 15, include_self=True, method="approximate")  # numba compiles on first use
    knn(x, 15, include_self=True, method="exact")  # JAX compiles for this shape
    exact_s, _ = timed(lambda: jax.block_until_ready(knn(x, 15, include_self=True, method="exact")))
    approximate_s, (_, found) = timed(
        lambda: jax.block_until_ready(knn(x, 15, include_self=True, method="approximate"))
    )
    _, truth = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
    recall = np.mean(np.any(np.asarray(found)[:, :, None] == truth[:, None, :], axis=2))
    return {
        "mouse_10k_knn_exact_s": round(exact_s, 3),
        "mouse_10k_knn_approximate_s": round(approximate_s, 3),
        "mouse_10k_knn_recall_at_15": round(float(recall), 4),
    }


def figure(ours: np.ndarray, peer: np.ndarray, labels: np.ndarray) -> None:
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    types = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    for ax, embedding, title in (
        (axes[0], ours, "zoo.DifferentiableUMAP"),
        (axes[1], peer, "umap-learn"),
    ):
        for i, cell_type in enumerate(types):
            chosen = labels == cell_type
            ax.scatter(*embedding[chosen].T, s=3, color=colours(i), label=cell_type)
        ax.set_title(f"{title} (pbmc3k)")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)
    plt.close(fig)


def main() -> None:
    pbmc = principal_components(DATA / "pbmc3k_2000hvg_counts.h5ad")
    mouse = principal_components(DATA / "mouse_10k_1000genes_counts.h5ad").obsm["X_pca"]
    x, labels = pbmc.obsm["X_pca"], pbmc.obs["cell_type"].to_numpy()

    fit_peer(x)  # numba compiles on first use
    first_s, _ = timed(fit_ours, x)
    peer_s, peer_model = timed(fit_peer, x)
    ours_s, (_, ours) = timed(fit_ours, x)
    peer = peer_model.embedding_
    figure(ours, peer, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UMAPDriftWarning)  # reported below
        refined_model, refined = fit_ours(x, free_coordinate_steps=500)
    drift = refined_model.drift(x, refined)
    results = {
        "name": "umap_pbmc3k",
        "ours_s": round(ours_s, 3),
        "peer": "umap-learn",
        "peer_s": round(peer_s, 3),
        "speedup": round(peer_s / ours_s, 2),
        "compile_s": round(first_s - ours_s, 3),
        "trustworthiness_ours": trust(x, ours),
        "trustworthiness_peer": trust(x, peer),
        "knn_accuracy_ours": accuracy(ours, labels),
        "knn_accuracy_peer": accuracy(peer, labels),
        "trustworthiness_ours_refined": trust(x, refined),
        "knn_accuracy_ours_refined": accuracy(refined, labels),
        "refined_drift_mean": round(drift["mean"], 4),
        "refined_drift_max": round(drift["max"], 4),
    }
    print(json.dumps(results), flush=True)

    new = np.random.default_rng(0).permutation(len(x))[:N_NEW]
    train = np.setdiff1d(np.arange(len(x)), new)
    model, ours_train = fit_ours(x[train])
    peer_model = fit_peer(x[train])
    model.transform(x[train[:N_NEW]])  # compile the encoder for this batch shape
    peer_model.transform(x[train[:100]])  # numba compiles the transform on first use
    ours_new_s, ours_new = timed(model.transform, x[new])
    peer_new_s, peer_new = timed(peer_model.transform, x[new])
    results |= {
        "embed_1000_new_ours_s": round(ours_new_s, 4),
        "embed_1000_new_peer_s": round(peer_new_s, 4),
        "held_out_accuracy_ours": held_out_accuracy(
            ours_train, labels[train], ours_new, labels[new]
        ),
        "held_out_accuracy_peer": held_out_accuracy(
            peer_model.embedding_, labels[train], peer_new, labels[new]
        ),
    }
    print(json.dumps(results), flush=True)

    fit_ours(mouse)  # compile for the larger padded arrays
    mouse_peer_s, mouse_peer = timed(fit_peer, mouse)
    mouse_ours_s, (_, mouse_ours) = timed(fit_ours, mouse)
    results |= {
        "mouse_10k_ours_s": round(mouse_ours_s, 3),
        "mouse_10k_peer_s": round(mouse_peer_s, 3),
        "mouse_10k_trustworthiness_ours": trust(mouse, mouse_ours),
        "mouse_10k_trustworthiness_peer": trust(mouse, mouse_peer.embedding_),
    }
    results |= neighbour_search(mouse)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
