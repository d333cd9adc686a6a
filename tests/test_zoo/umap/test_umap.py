"""`DifferentiableUMAP` and its parts against umap-learn and scikit-learn, in the same run, on
real cells: pbmc3k (2,638 PBMCs, 9 cell types) and a 3,000-cell subset of the 10,000 mouse
cells, each as 50 principal components of log-normalised counts (the full mouse comparison
is in ``benchmarks/umap.py``).

Tolerances: the exact kNN equals scikit-learn's; sigma and rho within 1e-3 relative of
umap-learn's ``smooth_knn_dist`` on the same neighbours, the graph weights within 1e-4 (and
the graph on approximate, pynndescent neighbours within 2% of the exact one's total weight);
``a, b`` within 1e-6 of ``find_ab_params``; trustworthiness (k = 15) not below umap-learn's
by more than 0.02; 2-D kNN cell-type accuracy on pbmc3k not below by more than 0.03. These
are checked on the default fit, whose embedding is the encoder's map (`transform`) of the
cells, to 1e-6.
"""

from __future__ import annotations

import warnings

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse
from sklearn.manifold import trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from umap import UMAP
from umap.umap_ import find_ab_params, fuzzy_simplicial_set
from umap.umap_ import smooth_knn_dist as umap_smooth_knn_dist

import zoo
from zoo.common.config import ConfigError
from zoo.common.knn import knn, knn_query
from zoo.umap.graph import curve_parameters, fuzzy_graph, smooth_knn_dist
from zoo.umap.model import UMAPDriftWarning

TRUST_TOLERANCE = 0.02
ACCURACY_TOLERANCE = 0.03
APPROXIMATE_GRAPH_TOLERANCE = 0.02


def principal_components(adata: anndata.AnnData, n: int = 50) -> np.ndarray:
    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=n, random_state=0)
    return adata.obsm["X_pca"].astype(np.float32)


@pytest.fixture(scope="module")
def pbmc(shared_data) -> anndata.AnnData:
    adata = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")
    adata.obsm["X_pca"] = principal_components(adata)
    return adata


@pytest.fixture(scope="module")
def mouse_subset(shared_data) -> np.ndarray:
    adata = anndata.read_h5ad(shared_data / "mouse_10k_1000genes_counts.h5ad")
    cells = np.random.default_rng(0).choice(adata.n_obs, 3000, replace=False)
    return principal_components(adata[np.sort(cells)])


@pytest.fixture(scope="module")
def pbmc_neighbours(pbmc):
    distances, indices = knn(pbmc.obsm["X_pca"], 15, include_self=True)
    return np.asarray(distances), np.asarray(indices)


def fit_both(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(umap-learn's embedding, ours) with the same graph settings; ours is the default fit,
    the encoder's map of the cells."""
    peer = UMAP(n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(x)
    model = zoo.DifferentiableUMAP(zoo.DifferentiableUMAPConfig(), key=jax.random.key(seed))
    _, ours = model.fit(x, key=jax.random.key(seed + 1), progress=False)
    return peer, ours


def knn_accuracy(embedding: np.ndarray, labels) -> float:
    return cross_val_score(KNeighborsClassifier(15), embedding, labels, cv=5).mean()


def test_knn_equals_scikit_learn(pbmc):
    x = pbmc.obsm["X_pca"]
    ref_distances, ref_indices = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
    for include_self, columns in ((True, slice(None)), (False, slice(1, None))):
        k = 15 if include_self else 14
        distances, indices = knn(x, k, include_self=include_self, block_size=300)
        np.testing.assert_allclose(distances, ref_distances[:, columns], rtol=1e-4, atol=1e-4)
        assert np.mean(np.asarray(indices) == ref_indices[:, columns]) > 0.999  # rare ties
    distances, indices = knn_query(x[:100], x[100:], 5, block_size=64)
    ref_distances, ref_indices = NearestNeighbors(n_neighbors=5).fit(x[100:]).kneighbors(x[:100])
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-4, atol=1e-4)


def test_knn_puts_each_point_first_even_with_duplicates():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    _, with_self = knn(x, 2, include_self=True)
    _, without_self = knn(x, 2)
    np.testing.assert_array_equal(np.asarray(with_self)[:, 0], np.arange(4))
    assert not np.any(np.asarray(without_self) == np.arange(4)[:, None])
    np.testing.assert_array_equal(np.asarray(without_self)[:2, 0], [1, 0])


@pytest.mark.parametrize("local_connectivity", [1.0, 1.5])
def test_sigma_and_rho_match_umap_learn(pbmc_neighbours, local_connectivity):
    distances, _ = pbmc_neighbours
    ref_sigma, ref_rho = umap_smooth_knn_dist(
        distances, 15.0, local_connectivity=local_connectivity
    )
    sigma, rho = smooth_knn_dist(distances, 15.0, local_connectivity=local_connectivity)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-3)
    np.testing.assert_allclose(rho, ref_rho, rtol=1e-3)


def test_graph_matches_umap_learn(pbmc, pbmc_neighbours):
    distances, indices = pbmc_neighbours
    for mix in (1.0, 0.5):
        reference, _, _ = fuzzy_simplicial_set(
            pbmc.obsm["X_pca"], 15, 0, "euclidean",
            knn_indices=indices, knn_dists=distances, set_op_mix_ratio=mix,
        )  # fmt: skip
        graph = fuzzy_graph(indices, distances, set_op_mix_ratio=mix)
        ours = scipy.sparse.csr_matrix(
            (graph.weights, (graph.heads, graph.tails)), shape=reference.shape
        )
        assert ours.nnz == reference.nnz
        assert abs(ours - reference.tocsr()).max() < 1e-4


def test_graph_on_approximate_neighbours_is_close_to_exact(pbmc):
    """pynndescent's neighbours (forced; `auto` would search exactly at this size) change
    less than 2% of the graph's total weight."""
    x = pbmc.obsm["X_pca"]
    model = zoo.DifferentiableUMAP(zoo.DifferentiableUMAPConfig(), key=jax.random.key(0))
    graphs = [model.graph(x, knn_method=method) for method in ("exact", "approximate")]
    exact, approximate = (
        scipy.sparse.csr_matrix((g.weights, (g.heads, g.tails)), shape=(len(x), len(x)))
        for g in graphs
    )
    assert abs(approximate - exact).sum() / exact.sum() < APPROXIMATE_GRAPH_TOLERANCE
    with pytest.raises(ValueError, match="knn method must be one of"):
        model.fit(x, key=jax.random.key(1), knn_method="annoy")


@pytest.mark.parametrize(("min_dist", "spread"), [(0.1, 1.0), (0.5, 1.0), (0.25, 2.0)])
def test_curve_matches_find_ab_params(min_dist, spread):
    np.testing.assert_allclose(
        curve_parameters(min_dist, spread), find_ab_params(spread, min_dist), rtol=1e-6
    )


def test_pbmc3k_quality_against_umap_learn(pbmc):
    x, labels = pbmc.obsm["X_pca"], pbmc.obs["cell_type"].to_numpy()
    peer, ours = fit_both(x)
    peer_trust = trustworthiness(x, peer, n_neighbors=15)
    assert trustworthiness(x, ours, n_neighbors=15) >= peer_trust - TRUST_TOLERANCE
    assert knn_accuracy(ours, labels) >= knn_accuracy(peer, labels) - ACCURACY_TOLERANCE


def test_mouse_quality_against_umap_learn(mouse_subset):
    peer, ours = fit_both(mouse_subset)
    peer_trust = trustworthiness(mouse_subset, peer, n_neighbors=15)
    assert trustworthiness(mouse_subset, ours, n_neighbors=15) >= peer_trust - TRUST_TOLERANCE


def small_config(**changes) -> zoo.DifferentiableUMAPConfig:
    settings = {"n_steps": 50, "width": 16, "depth": 1}
    return zoo.DifferentiableUMAPConfig(**(settings | changes))


def test_anndata_transform_and_checkpoint(pbmc, tmp_path):
    adata = pbmc[:400].copy()
    model = zoo.DifferentiableUMAP(small_config(), key=jax.random.key(0))
    fitted, embedding = model.fit(adata, use_rep="X_pca", key=jax.random.key(1), progress=False)
    assert adata.obsm["X_umap"].shape == (400, 2)
    np.testing.assert_array_equal(adata.obsm["X_umap"], embedding)
    new_cells = pbmc[400:500].copy()
    fitted.transform(new_cells, use_rep="X_pca", key_added="X_umap_new")
    assert new_cells.obsm["X_umap_new"].shape == (100, 2)
    np.testing.assert_allclose(fitted.transform(adata, use_rep="X_pca"), embedding, atol=1e-5)

    zoo.save_pretrained(fitted, tmp_path / "umap")
    loaded = zoo.from_pretrained(tmp_path / "umap")
    assert loaded.config == fitted.config and loaded.curve == fitted.curve
    np.testing.assert_array_equal(
        loaded.transform(new_cells, use_rep="X_pca"), new_cells.obsm["X_umap_new"]
    )


def test_fit_and_transform_are_one_map_by_default(pbmc):
    """By default `fit`'s embedding of the training cells is the encoder's: `transform` of
    the same cells gives it back (to 1e-6, float32 rounding of the same computation)."""
    adata = pbmc[:400].copy()
    config = zoo.DifferentiableUMAPConfig(n_steps=50, width=16, depth=1)
    model = zoo.DifferentiableUMAP(config, key=jax.random.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UMAPDriftWarning)
        fitted, embedding = model.fit(adata, use_rep="X_pca", key=jax.random.key(1), progress=False)
    again = fitted.transform(adata.obsm["X_pca"])
    np.testing.assert_allclose(again, embedding, rtol=0, atol=1e-6)
    assert fitted.drift(adata.obsm["X_pca"], embedding)["max"] < 1e-6
    assert "X_umap_drift" not in adata.uns


def test_refined_coordinates_report_their_drift(pbmc):
    """With free_coordinate_steps the fit's embedding leaves the encoder's map; the drift it
    reports equals, to 1e-5 relative, the distances recomputed here from `transform`, relative
    to the RMS spread of the encoder embedding; a later unrefined fit clears the stale entry."""
    adata = pbmc[:400].copy()
    x = adata.obsm["X_pca"]
    model = zoo.DifferentiableUMAP(small_config(free_coordinate_steps=50), key=jax.random.key(0))
    with pytest.warns(UMAPDriftWarning, match="free_coordinate_steps=0") as caught:
        fitted, embedding = model.fit(adata, use_rep="X_pca", key=jax.random.key(1), progress=False)
    encoded = fitted.transform(x).astype(np.float64)
    distances = np.linalg.norm(embedding - encoded, axis=1)
    spread = np.sqrt(np.mean(np.sum((encoded - encoded.mean(axis=0)) ** 2, axis=1)))
    expected = {"mean": distances.mean() / spread, "max": distances.max() / spread}
    assert expected["mean"] > 0.01  # 50 free-coordinate steps move the cells measurably
    warning = caught[0].message
    for name, value in expected.items():
        assert adata.uns["X_umap_drift"][name] == pytest.approx(value, rel=1e-5)
        assert getattr(warning, name) == pytest.approx(value, rel=1e-5)
    np.testing.assert_array_equal(adata.obsm["X_umap"], embedding)

    zoo.DifferentiableUMAP(small_config(), key=jax.random.key(0)).fit(
        adata, use_rep="X_pca", key=jax.random.key(1), progress=False
    )
    assert "X_umap_drift" not in adata.uns


def test_layer_input_and_gradient(pbmc):
    adata = pbmc[:200, :100].copy()
    adata.layers["log"] = np.log1p(adata.X.toarray())
    config = small_config(n_features=100)
    model = zoo.DifferentiableUMAP(config, key=jax.random.key(0))
    fitted, _ = model.fit(adata, layer="log", key=jax.random.key(1), progress=False)
    assert adata.obsm["X_umap"].shape == (200, 2)
    features = jnp.asarray(adata.layers["log"][:8])
    gradient = jax.grad(lambda f: jnp.sum(jax.vmap(fitted)(f) ** 2))(features)
    assert gradient.shape == features.shape and bool(jnp.all(jnp.isfinite(gradient)))
    assert float(jnp.abs(gradient).max()) > 0.0


def test_bad_input_is_refused_with_a_clear_message(pbmc):
    x = pbmc.obsm["X_pca"][:100].copy()
    model = zoo.DifferentiableUMAP(small_config(), key=jax.random.key(0))
    key = jax.random.key(1)
    with pytest.raises(ValueError, match="larger than the number of cells"):
        model.fit(x[:10], key=key)
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(x, key=key)
    with pytest.raises(ValueError, match="takes 50 features"):
        model.fit(x[:, 10:30], key=key)
    with pytest.raises(ValueError, match="X_missing"):
        model.fit(pbmc, use_rep="X_missing", key=key)
    with pytest.raises(ValueError, match="k=200"):
        knn(pbmc.obsm["X_pca"][:100], 200)
    with pytest.raises(ConfigError, match="min_dist"):
        zoo.DifferentiableUMAPConfig(min_dist=2.0)
