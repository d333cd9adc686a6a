"""`zoo.common.knn.knn`'s approximate search (pynndescent) against scikit-learn's exact
neighbours on the real mouse 10k cells, and the conventions both methods share.

Data: 10,000 mouse cells, 50 principal components of log-normalised counts (scanpy), as
umap-learn users embed them. Recall is the fraction of each cell's exact 15 nearest
neighbours (self included) that the approximate search also returns, averaged over cells;
it must reach RECALL_AT_15. Distances of the neighbours found must equal the distances
scikit-learn computes for the same pairs within 1e-4.
"""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scanpy as sc
from sklearn.neighbors import NearestNeighbors

import zoo.common.knn as knn_module
from zoo.common.knn import knn

K = 15
RECALL_AT_15 = 0.95


@pytest.fixture(scope="module")
def mouse(shared_data) -> np.ndarray:
    adata = anndata.read_h5ad(shared_data / "mouse_10k_1000genes_counts.h5ad")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, random_state=0)
    return adata.obsm["X_pca"].astype(np.float32)


@pytest.fixture(scope="module")
def approximate(mouse):
    distances, indices = knn(mouse, K, include_self=True, method="approximate", seed=0)
    return np.asarray(distances), np.asarray(indices)


def test_recall_against_scikit_learn_on_mouse_10k(mouse, approximate):
    _, exact = NearestNeighbors(n_neighbors=K).fit(mouse).kneighbors(mouse)
    _, indices = approximate
    recall = np.mean(np.any(indices[:, :, None] == exact[:, None, :], axis=2))
    assert recall >= RECALL_AT_15, recall


def test_approximate_keeps_the_exact_conventions(mouse, approximate):
    distances, indices = approximate
    n = len(mouse)
    np.testing.assert_array_equal(indices[:, 0], np.arange(n))
    np.testing.assert_array_equal(distances[:, 0], 0.0)
    assert np.all(np.diff(distances, axis=1) >= 0.0)
    assert all(len(np.unique(row)) == K for row in indices)
    true_distances = np.linalg.norm(mouse[:, None, :] - mouse[indices], axis=-1)
    np.testing.assert_allclose(distances, true_distances, rtol=1e-4, atol=1e-4)
    _, without_self = knn(mouse[:2000], K, method="approximate", seed=0)
    assert not np.any(np.asarray(without_self) == np.arange(2000)[:, None])


def test_same_seed_same_neighbours(mouse):
    first, second = (
        tuple(map(np.asarray, knn(mouse[:2000], K, method="approximate", seed=7))) for _ in range(2)
    )
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0], second[0])


def test_self_first_among_exact_duplicates():
    points = np.random.default_rng(0).normal(size=(600, 10)).astype(np.float32)
    points[300:] = points[:300]  # every point has an exact duplicate
    _, indices = knn(points, 5, include_self=True, method="approximate", seed=0)
    indices = np.asarray(indices)
    np.testing.assert_array_equal(indices[:, 0], np.arange(600))
    np.testing.assert_array_equal(indices[:, 1], (np.arange(600) + 300) % 600)


def test_auto_switches_at_the_threshold(mouse, monkeypatch):
    points = mouse[:500]
    calls = []
    descent = knn_module._descent
    monkeypatch.setattr(knn_module, "_descent", lambda *a: calls.append(a) or descent(*a))
    monkeypatch.setattr(knn_module, "APPROXIMATE_ABOVE", len(points))
    knn(points, K, include_self=True)
    assert not calls
    monkeypatch.setattr(knn_module, "APPROXIMATE_ABOVE", len(points) - 1)
    knn(points, K, include_self=True, seed=3)
    assert len(calls) == 1 and calls[0][1:] == (K - 1, 3)


def test_unknown_method_is_refused(mouse):
    with pytest.raises(ValueError, match="knn method must be one of"):
        knn(mouse[:100], 5, method="annoy")
