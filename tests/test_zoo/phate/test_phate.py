"""`DifferentiablePHATE` against the phate package (and graphtools, which builds its graph),
in the same run, on real cells (pbmc3k) and on phate's own tree data (`phate.tree.gen_dla`).

Agreement is measured as the correlation of pairwise distances between the two embeddings
after Procrustes alignment; it must reach 0.95. The diffusion time chosen by the von
Neumann entropy knee must equal phate's on the same kernel. Subsets keep this file fast;
`python -m benchmarks.phate` runs the full pbmc3k data.
"""

from __future__ import annotations

import warnings

import anndata
import equinox as eqx
import graphtools
import jax
import jax.numpy as jnp
import numpy as np
import phate
import pytest
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

import zoo
from zoo.common.config import ConfigError
from zoo.common.pca import pca_scores
from zoo.phate.alpha_decay import dense_kernel, kernel_pattern, kernel_values
from zoo.phate.landmarks import landmark_operator
from zoo.phate.mds import classical_mds, pairwise_distances, smacof, stress
from zoo.phate.model import AFFINITY_THRESHOLD, diffusion_potential
from zoo.phate.von_neumann import knee_point, optimal_t, von_neumann_entropy

AGREEMENT = 0.95


def aligned_distance_correlation(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Pearson correlation of pairwise distances after Procrustes alignment."""
    theirs_aligned, ours_aligned, _ = procrustes(np.asarray(theirs), np.asarray(ours))
    return float(np.corrcoef(pdist(ours_aligned), pdist(theirs_aligned))[0, 1])


def run_phate(points: np.ndarray, **settings) -> tuple[np.ndarray, phate.PHATE]:
    operator = phate.PHATE(n_pca=None, random_state=0, verbose=0, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # phate's SGD convergence notes
        return operator.fit_transform(points), operator


@pytest.fixture(scope="module")
def pbmc_pcs(shared_data) -> np.ndarray:
    """1,000 pbmc3k cells: library-size normalised to 1e4, log1p, 100 principal components
    by randomized PCA, as phate's preprocessing and graphtools' n_pca do."""
    adata = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    counts = counts[np.random.default_rng(0).permutation(counts.shape[0])[:1000]]
    expression = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    return PCA(100, svd_solver="randomized", random_state=0).fit_transform(expression)


@pytest.fixture(scope="module")
def tree() -> np.ndarray:
    """phate's artificial tree: 8 branches of 100 points in 100 dimensions."""
    points, _ = phate.tree.gen_dla(n_dim=100, n_branch=8, branch_length=100, seed=37)
    return points


def test_kernel_matches_graphtools(pbmc_pcs):
    points = pbmc_pcs[:500]
    graph = graphtools.Graph(
        points, knn=5, decay=40, thresh=AFFINITY_THRESHOLD, n_pca=None, verbose=0
    )
    expected = graph.kernel.toarray()
    x = jnp.asarray(points, jnp.float32)
    pattern = kernel_pattern(x, 5, 40.0, AFFINITY_THRESHOLD)
    kernel = np.asarray(dense_kernel(kernel_values(x, pattern, 40.0, AFFINITY_THRESHOLD), pattern))
    assert np.array_equal(kernel > 0, expected > 0)
    np.testing.assert_allclose(kernel, expected, atol=1e-4)
    np.testing.assert_array_equal(np.diag(kernel), 1.0)


@pytest.mark.parametrize("dataset", ["pbmc3k", "tree"])
def test_exact_phate_agrees_with_phate(dataset, pbmc_pcs, tree):
    points = pbmc_pcs[:500] if dataset == "pbmc3k" else tree
    theirs, operator = run_phate(points, n_landmark=None)
    model = zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(n_pca=None, n_landmark=None))
    adata = anndata.AnnData(X=points.astype(np.float32))
    ours = model.fit_transform(adata, key=jax.random.key(0))
    assert adata.uns["phate"]["t"] == operator.optimal_t
    assert aligned_distance_correlation(ours, theirs) >= AGREEMENT


def test_landmark_operator_and_t_match_phate(pbmc_pcs):
    theirs, operator = run_phate(pbmc_pcs, n_landmark=250)
    landmark_graph = operator.graph
    x = jnp.asarray(pbmc_pcs, jnp.float32)
    pattern = kernel_pattern(x, 5, 40.0, AFFINITY_THRESHOLD)
    values = kernel_values(x, pattern, 40.0, AFFINITY_THRESHOLD)
    _, clusters = np.unique(landmark_graph.clusters, return_inverse=True)
    ours_op = landmark_operator(values, pattern, jnp.asarray(clusters), int(clusters.max()) + 1)
    np.testing.assert_allclose(np.asarray(ours_op), landmark_graph.landmark_op, atol=1e-5)
    assert optimal_t(np.asarray(ours_op)) == operator.optimal_t

    model = zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(n_pca=None, n_landmark=250))
    ours = model.fit_transform(pbmc_pcs, key=jax.random.key(0))
    assert ours.shape == (pbmc_pcs.shape[0], 2)
    assert aligned_distance_correlation(ours, theirs) >= AGREEMENT


def test_von_neumann_entropy_and_knee_match_phate(tree):
    rng = np.random.default_rng(0)
    kernel = rng.random((60, 60)) ** 4
    operator = (kernel + kernel.T) / (kernel + kernel.T).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        von_neumann_entropy(operator, 40),
        phate.vne.compute_von_neumann_entropy(operator, t_max=40),
        rtol=1e-9,
        atol=1e-12,
    )
    for curve in (np.exp(-np.arange(30) / 7.0), 1 / (1 + np.arange(50)), rng.random(20)):
        assert knee_point(curve) == phate.vne.find_knee_point(curve)


def test_potential_uses_true_matrix_power():
    """P^t by repeated products, not by eigendecomposing a symmetrised P."""
    rng = np.random.default_rng(1)
    kernel = rng.random((30, 30)) ** 3
    operator = kernel / kernel.sum(axis=1, keepdims=True)  # not symmetric, not symmetrisable
    powered = np.linalg.matrix_power(operator, 7)
    np.testing.assert_allclose(
        np.asarray(diffusion_potential(jnp.asarray(operator, jnp.float32), 7, 1.0)),
        -np.log(powered + 1e-7),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(diffusion_potential(jnp.asarray(operator, jnp.float32), 7, 0.0)),
        2 * np.sqrt(powered),
        rtol=1e-4,
    )


def test_mds_recovers_a_euclidean_configuration():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(120, 2)) * np.array([3.0, 1.0])
    distances = pairwise_distances(jnp.asarray(points, jnp.float32))
    classic = classical_mds(distances, 2)
    assert aligned_distance_correlation(np.asarray(classic), points) > 0.9999
    noisy = distances * jnp.asarray(1 + 0.1 * rng.random((120, 120)), jnp.float32)
    noisy = (noisy + noisy.T) / 2 * (1 - jnp.eye(120))
    start = classical_mds(noisy, 2)
    assert stress(noisy, smacof(noisy, start, 50)) < stress(noisy, start)


@pytest.mark.parametrize("mds", ["classic", "metric"])
def test_gradient_matches_finite_differences(mds, tree):
    points = jnp.asarray(tree[::4, :20], jnp.float32)  # 200 points
    model = zoo.DifferentiablePHATE(
        zoo.DifferentiablePHATEConfig(n_pca=None, n_landmark=None, mds=mds, mds_steps=30)
    )
    graph = model.graph(points, key=jax.random.key(0))
    weights = jnp.asarray(np.random.default_rng(3).random((points.shape[0], 2)), jnp.float32)

    @eqx.filter_jit
    def loss(x):
        return jnp.sum(weights * model(x, graph) ** 2)  # invariant to each axis's sign

    gradient = jax.grad(loss)(points)
    direction = jnp.asarray(np.random.default_rng(4).normal(size=points.shape), jnp.float32)
    step = 1e-3
    numerical = (loss(points + step * direction) - loss(points - step * direction)) / (2 * step)
    np.testing.assert_allclose(float(jnp.sum(gradient * direction)), float(numerical), rtol=0.05)


def test_landmark_embedding_is_differentiable(pbmc_pcs):
    # the configuration of test_landmark_operator_and_t_match_phate: its programs are reused
    model = zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(n_pca=None, n_landmark=250))
    points = jnp.asarray(pbmc_pcs, jnp.float32)
    graph = model.graph(points, key=jax.random.key(0))
    assert graph.n_landmarks is not None and graph.n_landmarks <= 250
    gradient = np.asarray(jax.grad(lambda x: jnp.sum(model(x, graph) ** 2))(points))
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_pca_matches_scikit_learn_and_is_differentiable(pbmc_pcs):
    x = pbmc_pcs[:300]
    ours = np.asarray(pca_scores(jnp.asarray(x, jnp.float32), 10))
    theirs = PCA(10, svd_solver="full").fit_transform(x)
    leading = np.abs(theirs[:, :3])  # well separated components agree entry by entry
    np.testing.assert_allclose(np.abs(ours[:, :3]), leading, atol=1e-3 * leading.max())
    assert np.corrcoef(pdist(ours), pdist(theirs))[0, 1] > 0.995  # randomized: 0.9915
    gradient = jax.grad(lambda x: jnp.sum(pca_scores(x, 10) ** 2))(jnp.asarray(x, jnp.float32))
    assert np.all(np.isfinite(np.asarray(gradient)))


def test_anndata_in_and_out(pbmc_pcs):
    adata = anndata.AnnData(X=np.zeros((300, 3), np.float32), obsm={"X_pca": pbmc_pcs[:300]})
    model = zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(n_landmark=None, mds="classic"))
    embedding = model.fit_transform(adata, use_rep="X_pca", key=jax.random.key(0))
    np.testing.assert_array_equal(adata.obsm["X_phate"], embedding)
    assert adata.uns["phate"]["t"] >= 1
    with pytest.raises(ValueError, match="X_umap"):
        model.fit_transform(adata, use_rep="X_umap", key=jax.random.key(0))


def test_a_graph_of_other_cells_is_refused(tree):
    """`__call__` refuses a graph built on other cells: another count (also under jit), the
    same count of other cells, or the same cells in another order; it accepts the graph's
    own features, also with rounding differences."""
    points = np.asarray(tree[::4, :20], np.float32)  # 200 points
    model = zoo.DifferentiablePHATE(
        zoo.DifferentiablePHATEConfig(n_pca=None, n_landmark=None, mds="classic")
    )
    graph = model.graph(points[:100], key=jax.random.key(0))
    assert model(jnp.asarray(points[:100]), graph).shape == (100, 2)
    rounding = 1 + 1e-6 * np.random.default_rng(7).standard_normal(points[:100].shape)
    recomputed = jnp.asarray(points[:100] * rounding, jnp.float32)  # a few ulps apart
    assert not np.array_equal(np.asarray(recomputed), points[:100])
    assert model(recomputed, graph).shape == (100, 2)
    with pytest.raises(ValueError, match=r"graph was built on 100 cells x 20 features, got 150"):
        model(jnp.asarray(points[:150]), graph)
    with pytest.raises(ValueError, match=r"graph was built on 100 cells x 20 features, got 150"):
        eqx.filter_jit(model)(jnp.asarray(points[:150]), graph)
    with pytest.raises(ValueError, match="graph was built on other features"):
        model(jnp.asarray(points[100:]), graph)
    reordered = points[:100][np.random.default_rng(6).permutation(100)]
    with pytest.raises(ValueError, match="graph was built on other features"):
        model(jnp.asarray(reordered), graph)


def _anndata(features):
    return anndata.AnnData(X=features, obsm={"X_pca": features})


FEATURES = np.random.default_rng(5).random((20, 4)).astype(np.float32)
# (name, call on a knn=5 model, error type, message)
BAD_INPUTS = [
    ("nan", lambda m: m.fit_transform(_put(FEATURES, np.nan), key=KEY), ValueError, "NaN"),
    ("inf", lambda m: m.fit_transform(_put(FEATURES, np.inf), key=KEY), ValueError, "infinite"),
    ("nan graph", lambda m: m.graph(_put(FEATURES, np.nan), key=KEY), ValueError, "NaN"),
    (
        "nan call",
        lambda m: m(jnp.asarray(_put(FEATURES, np.nan)), m.graph(FEATURES, key=KEY)),
        ValueError,
        "features contain NaN",
    ),
    (
        "few cells",
        lambda m: m.fit_transform(FEATURES[:5], key=KEY),
        ValueError,
        "knn=5 needs more than 5 cells, but there are 5",
    ),
    (
        "no cells",
        lambda m: m.fit_transform(FEATURES[:0], key=KEY),
        ValueError,
        "there are 0",
    ),
    (
        "no features",
        lambda m: m.fit_transform(FEATURES[:, :0], key=KEY),
        ValueError,
        "features must have at least one column",
    ),
    ("1-D", lambda m: m.fit_transform(FEATURES[0], key=KEY), ValueError, "features must be 2-D"),
    (
        "text",
        lambda m: m.fit_transform(FEATURES.astype(str), key=KEY),
        ValueError,
        "features must be real numbers, got dtype <U",
    ),
    (
        "complex",
        lambda m: m.fit_transform(FEATURES + 0j, key=KEY),
        ValueError,
        "features must be real numbers, got dtype complex",
    ),
    (
        "layer and use_rep",
        lambda m: m.fit_transform(_anndata(FEATURES), layer="x", use_rep="X_pca", key=KEY),
        ValueError,
        "at most one of layer and use_rep",
    ),
    (
        "use_rep",
        lambda m: m.fit_transform(_anndata(FEATURES), use_rep="X_umap", key=KEY),
        ValueError,
        "X_umap",
    ),
    (
        "layer",
        lambda m: m.fit_transform(_anndata(FEATURES), layer="counts", key=KEY),
        ValueError,
        "layer 'counts'",
    ),
    (
        "use_rep of an array",
        lambda m: m.fit_transform(FEATURES, use_rep="X_pca", key=KEY),
        ValueError,
        "AnnData input only",
    ),
]
KEY = jax.random.key(0)


def _put(features, value):
    bad = features.copy()
    bad[3, 1] = value
    return bad


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_named(call, error, message):
    model = zoo.DifferentiablePHATE(
        zoo.DifferentiablePHATEConfig(knn=5, n_landmark=None, mds="classic")
    )
    with pytest.raises(error, match=message):
        call(model)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="gamma"):
        zoo.DifferentiablePHATEConfig(gamma=2.0)
    with pytest.raises(ConfigError, match="mds"):
        zoo.DifferentiablePHATEConfig(mds="nonmetric")


def test_checkpoint_round_trip(tmp_path):
    config = zoo.DifferentiablePHATEConfig(knn=7, decay=20.0, t=12, gamma=0.0, n_landmark=None)
    zoo.save_pretrained(zoo.DifferentiablePHATE(config), tmp_path / "phate")
    assert zoo.from_pretrained(tmp_path / "phate").config == config
