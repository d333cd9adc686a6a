"""`VAENormalizer`: scVI's variational autoencoder of single-cell counts (Lopez et al., 2018,
"Deep generative modeling for single-cell transcriptomics", Nature Methods).

Generative model of one cell with counts ``x`` (``n_genes``) from batch ``s``::

    z ~ N(0, I)                                   (n_latent)
    rho = softmax(f(z, s))                        per-gene proportions, summing to 1
    l = log(sum(x))          (library "observed") or  l ~ N(m_s, v_s)  (library "latent")
    x_g ~ Poisson(e^l rho_g) | NB(e^l rho_g, theta_g) | ZINB(e^l rho_g, theta_g, pi_g)

with ``theta`` (the NB inverse dispersion) per gene, per gene and batch, or per gene and cell
(a decoder output), and ``pi = sigmoid(h(z, s))`` the ZINB structural-zero probability. The
prior ``N(m_s, v_s)`` of the latent log library holds the mean and variance of the observed
log library sizes of batch ``s``, as in scvi-tools: `zoo.train_vae` takes them from its
training cells unless they were given with `VAENormalizer.with_library_prior`.

Inference network: ``q(z | x, s) = N(mu(x), sigma^2(x))`` from ``log1p(x)`` (and the one-hot
batch when ``encode_batch``); ``q(l | x)`` likewise for the latent library (with
``n_layers`` hidden layers, where scvi-tools always uses one). The encoders' variance is
``exp(.) + 1e-4``, as in scvi-tools.

Each hidden layer is ``Linear -> LayerNorm (no affine) -> ReLU -> Dropout``, with the one-hot
batch concatenated to the input of every decoder layer (and of every encoder layer when
``encode_batch``). This is scvi-tools' ``SCVI(use_layer_norm="both", use_batch_norm="none")``;
layer norm is used instead of scvi-tools' default batch norm because it acts on one cell at a
time, so `__call__` handles one example and the model carries no running statistics.

The evidence lower bound of one cell, with one reparameterised sample ``z ~ q``::

    ELBO = log p(x | z, l) - KL(q(z | x) || N(0, I)) [- KL(q(l | x) || N(m_s, v_s))]

where ``log p`` is the exact log-probability (`zoo.common.likelihoods`). scvi-tools' ``get_elbo``
reports the negative of its mean over cells.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from zoo.common.config import Config, require, require_choice, require_positive, require_probability
from zoo.common.likelihoods import (
    log_count_coefficient,
    negative_binomial_log_kernel,
    poisson_log_kernel,
    zinb_log_kernel,
)
from zoo.common.shapes import check_shape

LIKELIHOODS = ("poisson", "nb", "zinb")
DISPERSIONS = ("gene", "gene-batch", "gene-cell")
LIBRARIES = ("observed", "latent")
VARIANCE_FLOOR = 1e-4  # added to the encoder's variance, as scvi-tools does
LAYER_NORM_EPS = 1e-5

BatchIndex = Int[ArrayLike, ""]


@dataclasses.dataclass(frozen=True)
class VAENormalizerConfig(Config):
    """Architecture of a `VAENormalizer`.

    Attributes:
        n_genes: genes per cell (columns of the count matrix, in a fixed order).
        batch_labels: names of the batches (empty: one batch, no covariate). A cell's batch
            is given to the model as its index in this tuple.
        n_hidden: width of every hidden layer.
        n_latent: dimension of the latent space ``z``.
        n_layers: hidden layers in each of the encoder and the decoder.
        dropout_rate: dropout after each encoder hidden layer while training.
        likelihood: ``"poisson"``, ``"nb"`` (negative binomial) or ``"zinb"``.
        dispersion: where the NB inverse dispersion varies: ``"gene"``, ``"gene-batch"`` or
            ``"gene-cell"`` (unused by the Poisson likelihood).
        library: ``"observed"`` (log total counts) or ``"latent"`` (inferred, with a
            per-batch log-normal prior).
        encode_batch: give the one-hot batch to the encoders too (the decoder always gets it).
    """

    n_genes: int = 2000
    batch_labels: tuple[str, ...] | list[str] = ()  # a list (from JSON) becomes a tuple
    n_hidden: int = 128
    n_latent: int = 10
    n_layers: int = 1
    dropout_rate: float = 0.1
    likelihood: str = "zinb"
    dispersion: str = "gene"
    library: str = "observed"
    encode_batch: bool = False

    @property
    def n_batches(self) -> int:
        """Number of batches (at least 1)."""
        return max(1, len(self.batch_labels))

    def validate(self) -> None:
        require_positive(
            n_genes=self.n_genes,
            n_hidden=self.n_hidden,
            n_latent=self.n_latent,
            n_layers=self.n_layers,
        )
        require_probability(dropout_rate=self.dropout_rate)
        require_choice("likelihood", self.likelihood, LIKELIHOODS)
        require_choice("dispersion", self.dispersion, DISPERSIONS)
        require_choice("library", self.library, LIBRARIES)
        require(
            len(set(self.batch_labels)) == len(self.batch_labels),
            f"batch_labels must be distinct, got {self.batch_labels}",
        )
        require(
            all(isinstance(label, str) for label in self.batch_labels),
            "batch_labels must be strings",
        )


class Posterior(NamedTuple):
    """A diagonal Gaussian ``N(mean, variance)`` computed by an encoder."""

    mean: Float[Array, " dim"]
    variance: Float[Array, " dim"]


class ExpressionModel(NamedTuple):
    """The decoder's distribution of one cell's counts. `inverse_dispersion` is None for the
    Poisson likelihood and `zero_logits` for every likelihood but ZINB."""

    proportions: Float[Array, " n_genes"]
    mean: Float[Array, " n_genes"]
    inverse_dispersion: Float[Array, " n_genes"] | None
    zero_logits: Float[Array, " n_genes"] | None


class ELBOTerms(NamedTuple):
    """The terms of one cell's evidence lower bound (see the module docstring)."""

    log_likelihood: Float[Array, ""]
    kl_latent: Float[Array, ""]
    kl_library: Float[Array, ""]

    @property
    def elbo(self) -> Float[Array, ""]:
        """``log_likelihood - kl_latent - kl_library``."""
        return self.log_likelihood - self.kl_latent - self.kl_library


def _layer_norm(x: Float[Array, " dim"]) -> Float[Array, " dim"]:
    centred = x - jnp.mean(x)
    return centred * jax.lax.rsqrt(jnp.mean(centred**2) + LAYER_NORM_EPS)


class HiddenLayers(eqx.Module):
    """``n_layers`` of ``Linear -> LayerNorm -> ReLU -> Dropout``; the covariates are
    concatenated to the input of every layer."""

    linears: tuple[eqx.nn.Linear, ...]
    dropout: eqx.nn.Dropout

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        n_covariates: int,
        dropout_rate: float,
        *,
        key: PRNGKeyArray,
    ):
        widths = [n_in] + [n_hidden] * (n_layers - 1)
        keys = jax.random.split(key, n_layers)
        self.linears = tuple(
            eqx.nn.Linear(width + n_covariates, n_hidden, key=k)
            for width, k in zip(widths, keys, strict=True)
        )
        self.dropout = eqx.nn.Dropout(dropout_rate)

    def __call__(
        self,
        x: Float[Array, " n_in"],
        covariates: Float[Array, " n_covariates"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_hidden"]:
        """Run the layers; dropout acts only when `key` is given."""
        keys = (
            [None] * len(self.linears) if key is None else jax.random.split(key, len(self.linears))
        )
        for linear, layer_key in zip(self.linears, keys, strict=True):
            x = jax.nn.relu(_layer_norm(linear(jnp.concatenate([x, covariates]))))
            x = self.dropout(x, key=layer_key, inference=layer_key is None)
        return x


class GaussianEncoder(eqx.Module):
    """Hidden layers followed by two linear heads: the mean and ``log(variance - 1e-4)``."""

    layers: HiddenLayers
    mean_head: eqx.nn.Linear
    log_variance_head: eqx.nn.Linear

    def __init__(
        self, config: VAENormalizerConfig, n_out: int, n_covariates: int, *, key: PRNGKeyArray
    ):
        layers_key, mean_key, variance_key = jax.random.split(key, 3)
        self.layers = HiddenLayers(
            config.n_genes,
            config.n_hidden,
            config.n_layers,
            n_covariates,
            config.dropout_rate,
            key=layers_key,
        )
        self.mean_head = eqx.nn.Linear(config.n_hidden, n_out, key=mean_key)
        self.log_variance_head = eqx.nn.Linear(config.n_hidden, n_out, key=variance_key)

    def __call__(
        self,
        log_counts: Float[Array, " n_genes"],
        covariates: Float[Array, " n_covariates"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Posterior:
        hidden = self.layers(log_counts, covariates, key=key)
        variance = jnp.exp(self.log_variance_head(hidden)) + VARIANCE_FLOOR
        return Posterior(self.mean_head(hidden), variance)


class Decoder(eqx.Module):
    """Hidden layers from ``(z, batch)`` to the gene proportions (softmax), and, where the
    config asks, per-cell log inverse dispersions and structural-zero logits."""

    layers: HiddenLayers
    proportion_head: eqx.nn.Linear
    log_dispersion_head: eqx.nn.Linear | None
    zero_head: eqx.nn.Linear | None

    def __init__(self, config: VAENormalizerConfig, n_covariates: int, *, key: PRNGKeyArray):
        layers_key, proportion_key, dispersion_key, zero_key = jax.random.split(key, 4)
        self.layers = HiddenLayers(
            config.n_latent, config.n_hidden, config.n_layers, n_covariates, 0.0, key=layers_key
        )
        self.proportion_head = eqx.nn.Linear(config.n_hidden, config.n_genes, key=proportion_key)
        per_cell = config.dispersion == "gene-cell" and config.likelihood != "poisson"
        self.log_dispersion_head = (
            eqx.nn.Linear(config.n_hidden, config.n_genes, key=dispersion_key) if per_cell else None
        )
        self.zero_head = (
            eqx.nn.Linear(config.n_hidden, config.n_genes, key=zero_key)
            if config.likelihood == "zinb"
            else None
        )


def _kl_standard_normal(q: Posterior) -> Float[Array, ""]:
    """``KL(N(mean, variance) || N(0, I))``."""
    return 0.5 * jnp.sum(q.variance + q.mean**2 - 1.0 - jnp.log(q.variance))


def _kl_normal(
    q: Posterior, prior_mean: Float[Array, ""], prior_variance: Float[Array, ""]
) -> Float[Array, ""]:
    """``KL(N(mean, variance) || N(prior_mean, prior_variance))``, summed over dimensions."""
    ratio = q.variance / prior_variance
    return 0.5 * jnp.sum(ratio + (q.mean - prior_mean) ** 2 / prior_variance - 1.0 - jnp.log(ratio))


class VAENormalizer(eqx.Module):
    """scVI's variational autoencoder (see the module docstring).

    ``model(counts, batch)`` gives one cell's latent mean; `elbo_terms` the pieces of its
    ELBO; `normalized_expression` its decoded proportions scaled to a chosen library size.
    Train with `zoo.fit_vae` (AnnData or arrays) or `zoo.train_vae`.
    """

    encoder: GaussianEncoder
    library_encoder: GaussianEncoder | None
    decoder: Decoder
    log_inverse_dispersion: Float[Array, "rows n_genes"] | None
    library_prior_mean: Float[Array, " n_batches"] | None
    library_prior_variance: Float[Array, " n_batches"] | None
    config: VAENormalizerConfig = eqx.field(static=True)

    def __init__(self, config: VAENormalizerConfig, *, key: PRNGKeyArray):
        """Initialise the networks (uniform ``+-1/sqrt(fan_in)`` weights, as PyTorch) and the
        log inverse dispersions (standard normal, as scvi-tools). A latent library's prior
        starts unset (NaN): `zoo.train_vae` sets it from the training cells, or set it with
        `with_library_prior`."""
        encoder_key, library_key, decoder_key, dispersion_key = jax.random.split(key, 4)
        n_covariates = config.n_batches if config.n_batches > 1 else 0
        n_encoder_covariates = n_covariates if config.encode_batch else 0
        self.encoder = GaussianEncoder(
            config, config.n_latent, n_encoder_covariates, key=encoder_key
        )
        self.decoder = Decoder(config, n_covariates, key=decoder_key)
        rows = {"gene": 1, "gene-batch": config.n_batches}.get(config.dispersion)
        self.log_inverse_dispersion = (
            jax.random.normal(dispersion_key, (rows, config.n_genes))
            if rows is not None and config.likelihood != "poisson"
            else None
        )
        latent_library = config.library == "latent"
        self.library_encoder = (
            GaussianEncoder(config, 1, n_encoder_covariates, key=library_key)
            if latent_library
            else None
        )
        unset = jnp.full(config.n_batches, jnp.nan)
        self.library_prior_mean = unset if latent_library else None
        self.library_prior_variance = unset if latent_library else None
        self.config = config

    @property
    def library_prior_is_set(self) -> bool:
        """False only for a latent library whose prior is still unset (NaN); eager use."""
        return self.library_prior_mean is None or not bool(
            jnp.any(jnp.isnan(self.library_prior_mean))
        )

    def checked_batch(self, batch: BatchIndex) -> Int[Array, ""]:
        """`batch` as an array that raises (`eqx.error_if`, also under jit) where it is used
        if it lies outside ``[0, n_batches)``."""
        n_batches = self.config.n_batches
        batch = jnp.asarray(batch)
        return eqx.error_if(
            batch, (batch < 0) | (batch >= n_batches), f"batch must lie in [0, {n_batches})"
        )

    def batch_covariates(self, batch: BatchIndex) -> Float[Array, " n_covariates"]:
        """The one-hot batch (empty when there is a single batch)."""
        if self.config.n_batches == 1:
            return jnp.zeros(0)
        return jax.nn.one_hot(self.checked_batch(batch), self.config.n_batches)

    def _encoder_covariates(self, batch: BatchIndex) -> Float[Array, " n_covariates"]:
        return self.batch_covariates(batch) if self.config.encode_batch else jnp.zeros(0)

    def encode(
        self,
        counts: Real[Array, " n_genes"],
        batch: BatchIndex = 0,
        *,
        dropout_key: PRNGKeyArray | None = None,
    ) -> Posterior:
        """``q(z | x, s)`` for one cell; dropout acts only when `dropout_key` is given."""
        check_shape("counts", counts, (self.config.n_genes,), "(n_genes,) for one cell")
        log_counts = jnp.log1p(counts.astype(jnp.float32))
        return self.encoder(log_counts, self._encoder_covariates(batch), key=dropout_key)

    def __call__(
        self, counts: Real[Array, " n_genes"], batch: BatchIndex = 0
    ) -> Float[Array, " n_latent"]:
        """The latent mean of one cell: its representation."""
        return self.encode(counts, batch).mean

    def decode(
        self, z: Float[Array, " n_latent"], batch: BatchIndex, log_library: Float[Array, ""]
    ) -> ExpressionModel:
        """``p(x | z, s, l)``: proportions ``rho``, mean ``e^l rho`` and, as configured,
        inverse dispersions and zero logits."""
        config = self.config
        hidden = self.decoder.layers(z, self.batch_covariates(batch))
        proportions = jax.nn.softmax(self.decoder.proportion_head(hidden))
        mean = jnp.exp(log_library) * proportions
        if config.likelihood == "poisson":
            inverse_dispersion = None
        elif self.decoder.log_dispersion_head is not None:
            inverse_dispersion = jnp.exp(self.decoder.log_dispersion_head(hidden))
        else:
            row = self.checked_batch(batch) if config.dispersion == "gene-batch" else 0
            inverse_dispersion = jnp.exp(self.log_inverse_dispersion[row])
        zero_logits = None if self.decoder.zero_head is None else self.decoder.zero_head(hidden)
        return ExpressionModel(proportions, mean, inverse_dispersion, zero_logits)

    def log_likelihood(
        self,
        counts: Real[Array, " n_genes"],
        expression: ExpressionModel,
        *,
        coefficient: Float[Array, ""] | None = None,
    ) -> Float[Array, ""]:
        """``log p(x | z, s, l)`` summed over genes, with every normalising constant.

        `coefficient` is the sum over genes of the ``lgamma`` terms
        (`zoo.common.likelihoods.log_count_coefficient`) when already computed, e.g. from the
        non-zero counts only by `sparse_log_coefficient`; it is computed here when None.
        """
        x = counts.astype(jnp.float32)
        theta = expression.inverse_dispersion
        if self.config.likelihood == "poisson":
            kernel = poisson_log_kernel(x, expression.mean)
        elif self.config.likelihood == "nb":
            kernel = negative_binomial_log_kernel(x, expression.mean, theta)
        else:
            kernel = zinb_log_kernel(x, expression.mean, theta, expression.zero_logits)
        if coefficient is None:
            coefficient = jnp.sum(log_count_coefficient(x, theta))
        return jnp.sum(kernel) + coefficient

    def sparse_log_coefficient(
        self,
        values: Float[Array, " nnz"],
        genes: Int[Array, " nnz"],
        batches: Int[Array, " nnz"],
    ) -> Float[Array, " nnz"]:
        """The ``lgamma`` terms of the log-likelihood at given count entries (gene index and
        batch index of each): as they vanish at zero counts, their sum over a cell's
        non-zero entries is its `log_likelihood` coefficient. Not available with
        ``dispersion="gene-cell"``, whose inverse dispersions come from the decoder."""
        require(
            self.decoder.log_dispersion_head is None,
            "sparse_log_coefficient needs a dispersion that is not per cell",
        )
        if self.log_inverse_dispersion is None:
            return log_count_coefficient(values)
        rows = batches if self.config.dispersion == "gene-batch" else jnp.zeros_like(batches)
        theta = jnp.exp(self.log_inverse_dispersion[rows, genes])
        return log_count_coefficient(values, theta)

    def elbo_terms(
        self,
        counts: Real[Array, " n_genes"],
        batch: BatchIndex = 0,
        *,
        key: PRNGKeyArray,
        dropout_key: PRNGKeyArray | None = None,
        coefficient: Float[Array, ""] | None = None,
    ) -> ELBOTerms:
        """One cell's ELBO terms with one reparameterised sample of ``z`` (and ``l``) drawn
        with `key`; dropout acts only when `dropout_key` is given (training). `coefficient`
        as in `log_likelihood`."""
        z_key, library_key = jax.random.split(key)
        z_dropout, library_dropout = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        q_z = self.encode(counts, batch, dropout_key=z_dropout)
        z = q_z.mean + jnp.sqrt(q_z.variance) * jax.random.normal(z_key, q_z.mean.shape)
        if self.library_encoder is None:
            log_library = jnp.log(jnp.sum(counts.astype(jnp.float32)))
            kl_library = jnp.zeros(())
        else:
            log_counts = jnp.log1p(counts.astype(jnp.float32))
            q_l = self.library_encoder(
                log_counts, self._encoder_covariates(batch), key=library_dropout
            )
            log_library = (q_l.mean + jnp.sqrt(q_l.variance) * jax.random.normal(library_key))[0]
            prior = self.checked_batch(batch)
            kl_library = _kl_normal(
                q_l, self.library_prior_mean[prior], self.library_prior_variance[prior]
            )
        expression = self.decode(z, batch, log_library)
        return ELBOTerms(
            self.log_likelihood(counts, expression, coefficient=coefficient),
            _kl_standard_normal(q_z),
            kl_library,
        )

    def normalized_expression(
        self,
        counts: Real[Array, " n_genes"],
        batch: BatchIndex = 0,
        *,
        target_library: float = 1e4,
        transform_batch: BatchIndex | None = None,
    ) -> Float[Array, " n_genes"]:
        """Decoded proportions at the latent mean, times `target_library`: the expected
        counts of the cell at that library size, as if measured in batch `transform_batch`
        (default: its own batch)."""
        decode_batch = batch if transform_batch is None else transform_batch
        z = self.encode(counts, batch).mean
        return target_library * self.decode(z, decode_batch, jnp.zeros(())).proportions

    def with_library_prior(
        self,
        log_library_mean: Float[ArrayLike, " n_batches"],
        log_library_variance: Float[ArrayLike, " n_batches"],
    ) -> VAENormalizer:
        """A copy whose latent-library prior is ``N(mean_s, variance_s)`` per batch, e.g.
        the moments of ``log(total counts)`` of the training cells of each batch
        (`zoo.vae.inputs.library_moments`, which `zoo.train_vae` uses when the prior is
        unset).

        Raises:
            ValueError: naming the argument that is not ``(n_batches,)``, not finite, or
                (for the variance) not positive; or when the library is not latent.
        """
        require(self.library_encoder is not None, "the library prior needs library='latent'")
        shape = (self.config.n_batches,)
        for name, value in (
            ("log_library_mean", log_library_mean),
            ("log_library_variance", log_library_variance),
        ):
            value = np.asarray(value)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name} contains NaN or infinite values")
        if np.any(np.asarray(log_library_variance) <= 0):
            raise ValueError("log_library_variance must be positive")
        return eqx.tree_at(
            lambda m: (m.library_prior_mean, m.library_prior_variance),
            self,
            (
                jnp.asarray(log_library_mean, jnp.float32),
                jnp.asarray(log_library_variance, jnp.float32),
            ),
        )
