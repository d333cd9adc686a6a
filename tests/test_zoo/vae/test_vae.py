"""`VAENormalizer`: log-probabilities against scipy.stats, and the model on real cells
(sparse likelihood terms, checkpoints, config and input checks). The comparisons with
scvi-tools' SCVI are in `test_vae_scvi`.
"""

from __future__ import annotations

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import zoo
from zoo.common.config import ConfigError
from zoo.common.likelihoods import (
    log_count_coefficient,
    negative_binomial_log_prob,
    poisson_log_prob,
    zinb_log_prob,
)
from zoo.vae.fit import latent_mean, normalized_expression

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
