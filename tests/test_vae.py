"""`VAENormalizer` against scipy.stats (log-probabilities) and scvi-tools' SCVI (real cells).

The scvi-tools comparison trains both models in this run with the same architecture
(``n_hidden``, ``n_latent``, ``n_layers``, likelihood, gene dispersion, layer norm and no
batch norm: see `zoo.vae`), the same optimiser settings, minibatch size, epochs and KL
warm-up, on the same training cells, and scores them on the same held-out cells with the
same ELBO definition (scvi-tools' ``get_elbo``: reconstruction log-likelihood minus the KL,
per cell, one latent sample). To stay within CI time the genes are cut to the most variable
ones and training is short; `benchmarks.vae` runs the full data.
"""

from __future__ import annotations

import logging

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.stats

import zoo
from finetuning.embedding_metrics import knn_accuracy
from zoo.config import ConfigError
from zoo.likelihoods import (
    log_count_coefficient,
    negative_binomial_log_prob,
    poisson_log_prob,
    zinb_log_prob,
)
from zoo.vae_anndata import cell_elbo, latent_mean, normalized_expression

N_GENES = 1000  # most variable genes kept for the scvi-tools comparison
EPOCHS = 30
KL_WARMUP = 10
HELD_OUT = 0.1
ARCHITECTURE = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "likelihood": "zinb"}

# --- log-probabilities ------------------------------------------------------------------

COUNTS = np.array([0, 1, 2, 3, 7, 20, 150, 1000], dtype=np.float64)
MEANS = np.array([0.01, 0.7, 5.0, 80.0, 900.0])
THETAS = np.array([0.05, 1.0, 12.0, 300.0])
ZERO_LOGITS = np.array([-4.0, 0.0, 2.5])


def _grid(*axes):
    return [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]


def _in_float64(fn, *args):
    with jax.enable_x64(True):
        return np.asarray(fn(*(jnp.asarray(a, dtype=jnp.float64) for a in args)))


def test_poisson_matches_scipy():
    x, mu = _grid(COUNTS, MEANS)
    ours = _in_float64(poisson_log_prob, x, mu)
    np.testing.assert_allclose(ours, scipy.stats.poisson.logpmf(x, mu), rtol=1e-6, atol=1e-6)


def test_negative_binomial_matches_scipy():
    x, mu, theta = _grid(COUNTS, MEANS, THETAS)
    ours = _in_float64(negative_binomial_log_prob, x, mu, theta)
    expected = scipy.stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_zinb_matches_the_mixture_formula():
    """log(pi [x = 0] + (1 - pi) NB(x)), written independently from scipy's NB pmf."""
    x, mu, theta, logits = _grid(COUNTS, MEANS, THETAS, ZERO_LOGITS)
    pi = 1.0 / (1.0 + np.exp(-logits))
    nb_pmf = scipy.stats.nbinom.pmf(x, n=theta, p=theta / (theta + mu))
    expected = np.log(pi * (x == 0) + (1.0 - pi) * nb_pmf)
    ours = _in_float64(zinb_log_prob, x, mu, theta, logits)
    finite = np.isfinite(expected)  # nb_pmf underflows to 0 far in the tail
    assert finite.sum() > 0.9 * finite.size
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(ours))


def test_lgamma_coefficient_vanishes_at_zero():
    theta = jnp.asarray(THETAS, dtype=jnp.float32)
    assert np.all(np.asarray(log_count_coefficient(jnp.zeros_like(theta), theta)) == 0.0)
    assert np.all(np.asarray(log_count_coefficient(jnp.zeros(3))) == 0.0)


# --- the model on real cells --------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc3k(shared_data) -> anndata.AnnData:
    return anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")


@pytest.mark.parametrize(
    ("likelihood", "dispersion"), [("zinb", "gene-batch"), ("nb", "gene"), ("poisson", "gene")]
)
def test_sparse_coefficient_equals_the_dense_one(pbmc3k, likelihood, dispersion):
    """Training sums the lgamma terms over non-zero counts only; it must equal the sum over
    every gene."""
    counts = pbmc3k.X[:16].toarray().astype(np.float32)
    batches = np.arange(16) % 3
    config = zoo.VAENormalizerConfig(
        n_genes=counts.shape[1],
        batch_labels=("a", "b", "c"),
        likelihood=likelihood,
        dispersion=dispersion,
    )
    model = zoo.VAENormalizer(config, key=jax.random.key(0))
    for x, batch in zip(counts, batches, strict=True):
        expression = model.decode(jnp.zeros(config.n_latent), batch, jnp.zeros(()))
        dense = log_count_coefficient(jnp.asarray(x), expression.inverse_dispersion).sum()
        genes = np.flatnonzero(x)
        sparse = model.sparse_log_coefficient(
            jnp.asarray(x[genes]), jnp.asarray(genes), jnp.full(genes.size, batch)
        ).sum()
        np.testing.assert_allclose(float(sparse), float(dense), rtol=1e-5, atol=1e-4)


def test_save_load_round_trip(tmp_path, pbmc3k):
    config = zoo.VAENormalizerConfig(
        n_genes=pbmc3k.n_vars,
        batch_labels=("V2", "V3"),
        n_hidden=32,
        n_latent=4,
        n_layers=2,
        dispersion="gene-batch",
        library="latent",
        encode_batch=True,
    )
    model = zoo.VAENormalizer(config, key=jax.random.key(1)).with_library_prior(
        jnp.array([7.0, 8.0]), jnp.array([0.3, 0.5])
    )
    loaded = zoo.from_pretrained(zoo.save_pretrained(model, tmp_path / "vae"))
    assert loaded.config == config
    counts = jnp.asarray(pbmc3k.X[:4].toarray(), dtype=jnp.float32)
    batches = jnp.array([0, 1, 0, 1])
    key = jax.random.key(2)

    def outputs(m):
        return (
            jax.vmap(m)(counts, batches),
            jax.vmap(lambda x, b: m.elbo_terms(x, b, key=key).elbo)(counts, batches),
        )

    for ours, theirs in zip(outputs(model), outputs(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="likelihood"):
        zoo.VAENormalizerConfig(likelihood="gaussian")
    with pytest.raises(ConfigError, match="dispersion"):
        zoo.VAENormalizerConfig(dispersion="cell")
    with pytest.raises(ConfigError, match="distinct"):
        zoo.VAENormalizerConfig(batch_labels=("a", "a"))
    config = zoo.VAENormalizerConfig(batch_labels=("x", "y"), library="latent")
    assert zoo.VAENormalizerConfig.from_dict(config.to_dict()) == config


def test_bad_input_is_named(pbmc3k):
    cells = pbmc3k[:20].copy()
    dense = cells.X.toarray().astype(np.float32)
    key = jax.random.key(0)
    fit = dict(key=key, training=zoo.VAETrainingConfig(epochs=1), progress=False)
    for bad, message in [
        (np.where(dense == dense.max(), -1.0, dense), "negative"),
        (dense + 0.5, "non-integer"),
        (np.where(dense == dense.max(), np.nan, dense), "NaN"),
        (np.vstack([dense, np.zeros_like(dense[:1])]), "no counts"),
    ]:
        with pytest.raises(ValueError, match=message):
            zoo.fit_vae(bad, **fit)
    with pytest.raises(ValueError, match=r"batch key 'donor' not in adata\.obs"):
        zoo.fit_vae(cells, batch_key="donor", **fit)
    with pytest.raises(ValueError, match=r"layer 'counts' not in adata\.layers"):
        zoo.fit_vae(cells, layer="counts", **fit)
    model = zoo.fit_vae(dense, batch_key=np.array(["a", "b"] * 10), **fit)
    with pytest.raises(ValueError, match=r"batch labels \['c'\] are not among"):
        latent_mean(model, dense, batch_key=np.array(["c"] * 20))
    with pytest.raises(ValueError, match="pass batch_key"):
        latent_mean(model, dense)
    with pytest.raises(ValueError, match="expects 2000"):
        latent_mean(model, dense[:, :100], batch_key=np.array(["a"] * 20))
    with pytest.raises(ValueError, match="transform_batch 'z'"):
        normalized_expression(model, dense, batch_key=np.array(["a"] * 20), transform_batch="z")


# --- against scvi-tools ---------------------------------------------------------------------


def most_variable_genes(adata: anndata.AnnData, n_genes: int) -> anndata.AnnData:
    """The `n_genes` genes of largest variance of log1p(counts per 10k), in original order."""
    counts = adata.X.toarray().astype(np.float64)
    log_normalized = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    keep = np.sort(np.argsort(log_normalized.var(axis=0))[::-1][:n_genes])
    return adata[:, keep].copy()


def split_cells(adata: anndata.AnnData) -> tuple[anndata.AnnData, anndata.AnnData]:
    """The most variable genes of the cells with counts, split into training and held-out."""
    adata = most_variable_genes(adata, N_GENES)
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    held_out = np.zeros(adata.n_obs, bool)
    rng = np.random.default_rng(0)
    held_out[rng.choice(adata.n_obs, int(HELD_OUT * adata.n_obs), replace=False)] = True
    return adata[~held_out].copy(), adata[held_out].copy()


def train_ours(train: anndata.AnnData, batch_key: str | None, seed: int):
    return zoo.fit_vae(
        train,
        key=jax.random.key(seed),
        batch_key=batch_key,
        training=zoo.VAETrainingConfig(epochs=EPOCHS, kl_warmup_epochs=KL_WARMUP),
        progress=False,
        **ARCHITECTURE,
    )


def train_scvi(train: anndata.AnnData, batch_key: str | None, seed: int):
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.verbosity = logging.ERROR
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    peer = scvi.model.SCVI(
        train,
        n_hidden=ARCHITECTURE["n_hidden"],
        n_latent=ARCHITECTURE["n_latent"],
        n_layers=ARCHITECTURE["n_layers"],
        gene_likelihood=ARCHITECTURE["likelihood"],
        dispersion="gene",
        use_layer_norm="both",
        use_batch_norm="none",
    )
    peer.train(
        max_epochs=EPOCHS,
        train_size=1.0,
        batch_size=128,
        plan_kwargs={"n_epochs_kl_warmup": KL_WARMUP},
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    return peer


def compare_with_scvi(adata: anndata.AnnData, batch_key: str | None, seeds: int) -> dict:
    """Per seed, train ours and scvi-tools' SCVI on the same 90% of cells; held-out ELBOs
    and latent means of every cell."""
    train, test = split_cells(adata)
    cells = anndata.concat([train, test])
    run = {"cells": cells, "test": test, "elbo": [], "peer_elbo": [], "latent": []}
    run["peer_latent"] = []
    for seed in range(seeds):
        ours = train_ours(train, batch_key, seed)
        peer = train_scvi(train, batch_key, seed)
        held_out_elbo = cell_elbo(ours, test, key=jax.random.key(seed), batch_key=batch_key)
        run["elbo"].append(float(held_out_elbo.mean()))
        run["peer_elbo"].append(float(peer.get_elbo(test)))
        run["latent"].append(latent_mean(ours, cells, batch_key=batch_key))
        run["peer_latent"].append(peer.get_latent_representation(cells))
        run["model"] = ours
    return run


@pytest.fixture(scope="module")
def three_chemistries(shared_data) -> dict:
    """Two seeds: batch mixing after short training varies by about 0.05 across seeds."""
    adata = anndata.read_h5ad(shared_data / "pbmc_3chem_counts.h5ad")
    return compare_with_scvi(adata, batch_key="batch", seeds=2)


@pytest.fixture(scope="module")
def nine_cell_types(pbmc3k) -> dict:
    return compare_with_scvi(pbmc3k, batch_key=None, seeds=1)


def mean_score(metric, latents, labels) -> float:
    return float(np.mean([metric(latent, labels, k=15) for latent in latents]))


@pytest.mark.parametrize("case", ["three_chemistries", "nine_cell_types"])
def test_held_out_elbo_matches_scvi(case, request):
    run = request.getfixturevalue(case)
    ours, peer = np.mean(run["elbo"]), np.mean(run["peer_elbo"])
    assert abs(ours - peer) / abs(peer) < 0.02, (run["elbo"], run["peer_elbo"])


@pytest.mark.parametrize("case", ["three_chemistries", "nine_cell_types"])
def test_cell_types_separate_as_in_scvi(case, request):
    run = request.getfixturevalue(case)
    cell_types = run["cells"].obs["cell_type"].to_numpy()
    ours = mean_score(knn_accuracy, run["latent"], cell_types)
    peer = mean_score(knn_accuracy, run["peer_latent"], cell_types)
    assert ours >= peer - 0.02, (ours, peer)


def test_outputs_land_in_scanpy_places(three_chemistries):
    model, test = three_chemistries["model"], three_chemistries["test"].copy()
    test.layers["counts"] = test.X.copy()
    test.X = scipy.sparse.csr_matrix(test.X.shape, dtype=np.float32)  # X no longer holds counts
    zoo.annotate_vae(
        model, test, key=jax.random.key(0), layer="counts", batch_key="batch", target_library=1e4
    )
    assert test.obsm["X_vae"].shape == (test.n_obs, 10)
    normalized = test.layers["vae_normalized"]
    np.testing.assert_allclose(normalized.sum(axis=1), 1e4, rtol=1e-4)
    assert np.all(np.isfinite(test.obs["vae_elbo"]))
    as_v3 = normalized_expression(
        model, test, layer="counts", batch_key="batch", transform_batch="V3"
    )
    v3 = test.obs["batch"].to_numpy() == "V3"
    np.testing.assert_allclose(as_v3[v3], normalized[v3], rtol=1e-5)
    assert not np.allclose(as_v3[~v3], normalized[~v3], rtol=1e-3)
