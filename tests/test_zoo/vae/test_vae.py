"""`VAENormalizer`: log-probabilities against scipy.stats, and the model on real cells
(sparse likelihood terms, checkpoints, config and input checks). The comparisons with
scvi-tools' SCVI are in `test_vae_scvi`.
"""

from __future__ import annotations

import anndata
import equinox as eqx
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


# --- the latent library's prior -------------------------------------------------------------


def _latent_library_model(n_genes: int, labels: tuple[str, ...]) -> zoo.VAENormalizer:
    config = zoo.VAENormalizerConfig(
        n_genes=n_genes, batch_labels=labels, n_hidden=32, n_latent=4, library="latent"
    )
    return zoo.VAENormalizer(config, key=jax.random.key(0))


def test_library_prior_defaults_to_the_empirical_one(pbmc3k):
    """Without a prior given, `train_vae` takes scvi-tools' per-batch moments of the log
    library size (its ``_init_library_size``: np.mean and np.var, ddof 0) from the training
    cells; here the batches are pbmc3k's cell types, whose library sizes differ."""
    cells = pbmc3k[:300]
    labels = tuple(sorted(set(cells.obs["cell_type"])))
    batches = np.array([labels.index(label) for label in cells.obs["cell_type"]], np.int32)
    log_library = np.log(np.asarray(cells.X.sum(axis=1), np.float64).ravel())
    expected_mean = np.array([log_library[batches == b].mean() for b in range(len(labels))])
    expected_variance = np.array([log_library[batches == b].var() for b in range(len(labels))])
    assert np.ptp(expected_mean) > 0.5  # the batches' priors really differ

    def prior_after_training(model):
        trained, _ = zoo.train_vae(
            model,
            cells.X,
            batches,
            zoo.VAETrainingConfig(epochs=1),
            key=jax.random.key(1),
            progress=False,
        )
        return np.asarray(trained.library_prior_mean), np.asarray(trained.library_prior_variance)

    model = _latent_library_model(cells.n_vars, labels)
    mean, variance = prior_after_training(model)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(variance, expected_variance, rtol=1e-5)
    given = model.with_library_prior(np.full(len(labels), 7.0), np.full(len(labels), 0.5))
    mean, variance = prior_after_training(given)
    np.testing.assert_array_equal(mean, 7.0)
    np.testing.assert_array_equal(variance, 0.5)


LIBRARY_KL_FACTOR = 10  # measured 17.5: 23.2 under N(0, 1) against 1.32 (empirical prior)


def test_empirical_library_prior_shrinks_the_library_kl(pbmc3k):
    """On 512 real pbmc3k cells (mean log library 6.27) after 30 epochs, the mean
    KL(q(l | x) || p(l)) under the empirical prior is at least 10 times smaller than under
    N(0, 1). The learning rate is 1e-2 so that so short a fit brings the library encoder's
    mean to the scale of the log library sizes (6.6 here; at 1e-3 it is still at 3.4)."""
    cells = pbmc3k[:512]
    batches = np.zeros(cells.n_obs, np.int32)
    counts = jnp.asarray(cells.X.toarray(), jnp.float32)
    training = zoo.VAETrainingConfig(epochs=30, kl_warmup_epochs=0, learning_rate=1e-2)
    keys = jax.random.split(jax.random.key(3), cells.n_obs)

    def library_kl(model):
        trained, _ = zoo.train_vae(
            model, cells.X, batches, training, key=jax.random.key(2), progress=False
        )
        terms = jax.vmap(lambda x, k: trained.elbo_terms(x, 0, key=k))(counts, keys)
        return float(jnp.mean(terms.kl_library))

    model = _latent_library_model(cells.n_vars, ())
    empirical = library_kl(model)
    standard = library_kl(model.with_library_prior(jnp.zeros(1), jnp.ones(1)))
    assert standard > LIBRARY_KL_FACTOR * empirical, (standard, empirical)


@pytest.fixture(scope="module")
def twenty_cells(pbmc3k) -> dict:
    """20 pbmc3k cells, a model trained on them in batches "a"/"b", and an untrained model
    with a latent library (prior unset)."""
    cells = pbmc3k[:20].copy()
    dense = cells.X.toarray().astype(np.float32)
    labels = np.array(["a", "b"] * 10)
    fit = dict(key=jax.random.key(0), training=zoo.VAETrainingConfig(epochs=1), progress=False)
    return {
        "cells": cells,
        "dense": dense,
        "labels": labels,
        "batches": np.arange(20) % 2,
        "fit": fit,
        "train": dict(config=fit["training"], key=fit["key"], progress=False),
        "model": zoo.fit_vae(dense, batch_key=labels, **fit),
        "untrained": _latent_library_model(dense.shape[1], ("a", "b")),
    }


def _with(dense, value, where=None):
    """`dense` with `value` at its largest entry (or where `where` says)."""
    bad = dense.astype(np.float64)
    bad[np.unravel_index(np.argmax(dense), dense.shape) if where is None else where] = value
    return bad


# (name, call on the twenty_cells dict, error type, message)
BAD_INPUTS = [
    ("negative", lambda d: zoo.fit_vae(_with(d["dense"], -1), **d["fit"]), "counts contain neg"),
    ("fraction", lambda d: zoo.fit_vae(d["dense"] + 0.5, **d["fit"]), "counts contain non-int"),
    ("nan", lambda d: zoo.fit_vae(_with(d["dense"], np.nan), **d["fit"]), "counts contain NaN"),
    ("inf", lambda d: zoo.fit_vae(_with(d["dense"], np.inf), **d["fit"]), "counts contain NaN"),
    (
        "zero-count cell",
        lambda d: zoo.fit_vae(np.vstack([d["dense"], np.zeros_like(d["dense"][:1])]), **d["fit"]),
        r"counts: 1 cell\(s\) have no counts \(first: row 20\)",
    ),
    ("no cells", lambda d: zoo.fit_vae(d["dense"][:0], **d["fit"]), "counts must have at least"),
    ("no genes", lambda d: zoo.fit_vae(d["dense"][:, :0], **d["fit"]), "counts must have at least"),
    ("1-D", lambda d: zoo.fit_vae(d["dense"][0], **d["fit"]), r"counts must be a \(cells, genes"),
    ("text", lambda d: zoo.fit_vae(d["dense"].astype(str), **d["fit"]), "counts must be a real"),
    ("complex", lambda d: zoo.fit_vae(d["dense"] + 0j, **d["fit"]), "counts must be a real"),
    (
        "missing obs column",
        lambda d: zoo.fit_vae(d["cells"], batch_key="donor", **d["fit"]),
        r"batch key 'donor' not in adata\.obs",
    ),
    (
        "missing layer",
        lambda d: zoo.fit_vae(d["cells"], layer="counts", **d["fit"]),
        r"layer 'counts' not in adata\.layers",
    ),
    (
        "too few labels",
        lambda d: zoo.fit_vae(d["dense"], batch_key=d["labels"][:5], **d["fit"]),
        "expected 20 batch labels",
    ),
    (
        "batch index too large",
        lambda d: zoo.train_vae(d["model"], d["dense"], d["batches"] + 1, **d["train"]),
        r"batches must lie in \[0, 2\)",
    ),
    (
        "negative batch index",
        lambda d: zoo.train_vae(d["model"], d["dense"], d["batches"] - 1, **d["train"]),
        r"batches must lie in \[0, 2\)",
    ),
    (
        "fractional batch index",
        lambda d: zoo.train_vae(d["model"], d["dense"], d["batches"] + 0.5, **d["train"]),
        "batches must be integer",
    ),
    (
        "batch per cell",
        lambda d: zoo.train_vae(d["model"], d["dense"], d["batches"][:3], **d["train"]),
        r"batches must have shape \(20,\)",
    ),
    (
        "genes for training",
        lambda d: zoo.train_vae(d["model"], d["dense"][:, :100], d["batches"], **d["train"]),
        "counts has 100 genes, the model expects 2000",
    ),
    (
        "zero-count cell for training",
        lambda d: zoo.train_vae(d["model"], _with(d["dense"], 0, 3), d["batches"], **d["train"]),
        r"counts: 1 cell\(s\) have no counts \(first: row 3\)",
    ),
    (
        "prior shape",
        lambda d: d["untrained"].with_library_prior(np.ones(3), np.ones(3)),
        r"log_library_mean must have shape \(2,\)",
    ),
    (
        "prior NaN",
        lambda d: d["untrained"].with_library_prior(np.array([7.0, np.nan]), np.ones(2)),
        "log_library_mean contains NaN",
    ),
    (
        "prior variance",
        lambda d: d["untrained"].with_library_prior(np.ones(2), np.array([0.5, 0.0])),
        "log_library_variance must be positive",
    ),
    (
        "unset prior",
        lambda d: latent_mean(d["untrained"], d["dense"], batch_key=d["labels"]),
        "model: its latent library prior is unset",
    ),
    (
        "unknown label",
        lambda d: latent_mean(d["model"], d["dense"], batch_key=np.array(["c"] * 20)),
        r"batch labels \['c'\] are not among",
    ),
    ("labels needed", lambda d: latent_mean(d["model"], d["dense"]), "pass batch_key"),
    (
        "genes for outputs",
        lambda d: latent_mean(d["model"], d["dense"][:, :100], batch_key=d["labels"]),
        "data has 100 genes, the model expects 2000",
    ),
    (
        "transform batch",
        lambda d: normalized_expression(
            d["model"], d["dense"], batch_key=d["labels"], transform_batch="z"
        ),
        "transform_batch 'z'",
    ),
    (
        "target library",
        lambda d: normalized_expression(
            d["model"], d["dense"], batch_key=d["labels"], target_library=0.0
        ),
        "target_library must be a positive number, got 0.0",
    ),
    (
        "batch index of one cell",
        lambda d: d["model"].elbo_terms(jnp.asarray(d["dense"][0]), 2, key=jax.random.key(0)),
        r"batch must lie in \[0, 2\)",
    ),
    (
        "batch index under jit",
        lambda d: eqx.filter_jit(
            jax.vmap(lambda x, b: d["model"].elbo_terms(x, b, key=jax.random.key(0)))
        )(jnp.asarray(d["dense"][:2]), jnp.array([0, 5])),
        r"batch must lie in \[0, 2\)",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_named(twenty_cells, call, message):
    with pytest.raises(Exception, match=message) as raised:
        call(twenty_cells)
    assert isinstance(raised.value, (ValueError, eqx.EquinoxRuntimeError)), raised.value
