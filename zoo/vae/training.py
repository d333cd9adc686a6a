"""Training a `VAENormalizer` by stochastic maximisation of the ELBO (scVI's recipe).

Each epoch visits the cells in a fresh random order in minibatches of ``batch_size`` (the
last one padded and masked out, so one compiled step serves every minibatch). The loss of a
minibatch is the mean over its cells of::

    -log p(x | z, l) + w_epoch * KL(q(z) || p(z)) + KL(q(l) || p(l))

with the KL warm-up weight ``w_epoch = min(1, epoch / kl_warmup_epochs)`` (epoch counted
from 0 and the weight held for the whole epoch, as scvi-tools does). The optimiser is Adam
with L2 weight decay added to the gradient (PyTorch's ``Adam(weight_decay=...)``, scvi-tools'
default), via optax.

The defaults are scvi-tools 1.4's ``SCVI.train``: 400 epochs (its ``max_epochs`` for up to
20,000 cells) and a 400-epoch warm-up, so the KL weight climbs for the whole run and ends at
399/400; with fewer epochs it stays below 1 (``epochs=100`` ends at 0.2475). Unlike
``SCVI.train``, which trains on a random 90% of the cells unless ``train_size=1.0``,
`train_vae` trains on every cell it is given.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse
from jaxtyping import Array, Float, Int, PRNGKeyArray
from tqdm.auto import tqdm

from zoo.common.config import Config, require, require_positive
from zoo.vae.inputs import check_batch_indices, library_moments, read_counts
from zoo.vae.model import VAENormalizer


@dataclasses.dataclass(frozen=True)
class VAETrainingConfig(Config):
    """Optimisation settings of `train_vae` (defaults are scvi-tools', module docstring).

    Attributes:
        epochs: passes over the cells.
        batch_size: cells per minibatch.
        learning_rate: Adam step size.
        weight_decay: L2 penalty coefficient added to the gradient.
        adam_eps: Adam's denominator epsilon.
        kl_warmup_epochs: epochs over which the KL weight rises linearly from 0 to 1
            (0: weight 1 from the start).
    """

    epochs: int = 400
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    adam_eps: float = 0.01
    kl_warmup_epochs: int = 400

    def validate(self) -> None:
        require_positive(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            adam_eps=self.adam_eps,
        )
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(
            self.kl_warmup_epochs >= 0,
            f"kl_warmup_epochs must be >= 0, got {self.kl_warmup_epochs}",
        )

    def kl_weight(self, epoch: int) -> float:
        """The KL warm-up weight of `epoch` (counted from 0)."""
        if self.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.kl_warmup_epochs)

    def optimizer(self) -> optax.GradientTransformation:
        """Adam with coupled L2 weight decay (one object per setting, so that the compiled
        training step is reused across calls)."""
        return _adam_with_l2(self.learning_rate, self.weight_decay, self.adam_eps)


@functools.cache
def _adam_with_l2(
    learning_rate: float, weight_decay: float, eps: float
) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, eps=eps))


DEFAULT_TRAINING = VAETrainingConfig()


def trainable(model: VAENormalizer) -> VAENormalizer:
    """The filter spec of the trained leaves: every float array but the library prior."""
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
    if model.library_prior_mean is None:
        return spec
    return eqx.tree_at(
        lambda m: (m.library_prior_mean, m.library_prior_variance), spec, (False, False)
    )


class Minibatch(NamedTuple):
    """Cells of one training step, dense, with their non-zero counts listed as entries.

    Padding cells have weight 0; padding entries have value 0 (whose ``lgamma`` terms are 0).
    """

    counts: Float[Array, "cells n_genes"]
    batches: Int[Array, " cells"]
    weights: Float[Array, " cells"]
    entry_cells: Int[Array, " capacity"]
    entry_genes: Int[Array, " capacity"]
    entry_values: Float[Array, " capacity"]


def minibatch_loss(
    model: VAENormalizer, minibatch: Minibatch, kl_weight: Float[Array, ""], key: PRNGKeyArray
) -> Float[Array, ""]:
    """The weighted mean over cells of ``-log p + kl_weight * KL_z + KL_l``, with dropout.

    The ``lgamma`` terms of ``log p`` are computed at the non-zero entries only (most counts
    are 0) unless the dispersion is per cell.
    """
    counts, batches = minibatch.counts, minibatch.batches
    n_cells = counts.shape[0]
    if model.decoder.log_dispersion_head is None:
        per_entry = model.sparse_log_coefficient(
            minibatch.entry_values, minibatch.entry_genes, batches[minibatch.entry_cells]
        )
        coefficients = jax.ops.segment_sum(per_entry, minibatch.entry_cells, n_cells)
    else:
        coefficients = None
    sample_keys, dropout_keys = jnp.split(jax.random.split(key, 2 * n_cells), 2)

    def cell_loss(x, batch, sample_key, dropout_key, coefficient):
        terms = model.elbo_terms(
            x, batch, key=sample_key, dropout_key=dropout_key, coefficient=coefficient
        )
        return -terms.log_likelihood + kl_weight * terms.kl_latent + terms.kl_library

    losses = jax.vmap(cell_loss)(counts, batches, sample_keys, dropout_keys, coefficients)
    return jnp.sum(minibatch.weights * losses) / jnp.sum(minibatch.weights)


@eqx.filter_jit
def _step(trained, frozen, opt_state, minibatch, kl_weight, key, optimizer):
    def loss_of(trained):
        return minibatch_loss(eqx.combine(trained, frozen), minibatch, kl_weight, key)

    loss, grads = eqx.filter_value_and_grad(loss_of)(trained)
    updates, opt_state = optimizer.update(grads, opt_state, trained)
    return eqx.apply_updates(trained, updates), opt_state, loss


def entry_capacity(counts: scipy.sparse.csr_matrix, batch_size: int) -> int:
    """The most non-zero entries any ``batch_size`` cells can hold."""
    per_cell = np.sort(np.diff(counts.indptr))[::-1]
    return max(1, int(per_cell[:batch_size].sum()))


def make_minibatch(
    counts: scipy.sparse.csr_matrix,
    rows: np.ndarray,
    batches: np.ndarray,
    batch_size: int,
    capacity: int,
) -> Minibatch:
    """The cells `rows` of CSR `counts`, padded to `batch_size` cells (copies of the last
    cell, weight 0, listing no entries) and `capacity` entries."""
    weights = np.zeros(batch_size, np.float32)
    weights[: len(rows)] = 1.0
    block = counts[rows]
    pad = capacity - block.nnz
    entry_cells = np.repeat(np.arange(len(rows), dtype=np.int32), np.diff(block.indptr))
    padded_rows = np.pad(rows, (0, batch_size - len(rows)), mode="edge")
    return Minibatch(
        counts=counts[padded_rows].toarray(),
        batches=batches[padded_rows],
        weights=weights,
        entry_cells=np.pad(entry_cells, (0, pad)),
        entry_genes=np.pad(block.indices.astype(np.int32), (0, pad)),
        entry_values=np.pad(block.data, (0, pad)),
    )


def train_vae(
    model: VAENormalizer,
    counts,
    batches: np.ndarray,
    config: VAETrainingConfig = DEFAULT_TRAINING,
    *,
    key: PRNGKeyArray,
    progress: bool = True,
) -> tuple[VAENormalizer, np.ndarray]:
    """Train `model` on raw counts (`zoo.fit_vae` takes an AnnData and names the batches).

    A latent library's prior, if unset (a fresh `VAENormalizer`), becomes the per-batch
    empirical one of `counts` (`zoo.vae.inputs.library_moments`, as scvi-tools'
    ``_init_library_size``); a prior set with `VAENormalizer.with_library_prior` is kept.

    Args:
        model: the starting model.
        counts: ``(cells, n_genes)`` non-negative integer counts, dense or scipy sparse,
            every cell with at least one count.
        batches: ``(cells,)`` batch index of each cell in ``model.config.batch_labels``.
        config: optimisation settings.
        key: drives the cell order, the latent samples and dropout.
        progress: show a tqdm bar over epochs.

    Returns:
        The trained model and the mean training loss of each epoch.

    Raises:
        ValueError: naming `counts` or `batches` when they are not valid
            (`zoo.vae.inputs.read_counts`, `check_batch_indices`) or disagree with `model`.
    """
    counts = scipy.sparse.csr_matrix(read_counts(counts), dtype=np.float32)
    counts.sum_duplicates()
    n_cells, n_genes = counts.shape
    if n_genes != model.config.n_genes:
        raise ValueError(f"counts has {n_genes} genes, the model expects {model.config.n_genes}")
    batches = check_batch_indices(batches, n_cells, model.config.n_batches)
    if not model.library_prior_is_set:
        model = model.with_library_prior(*library_moments(counts, batches, model.config.n_batches))
    batch_size = min(config.batch_size, n_cells)
    capacity = entry_capacity(counts, batch_size)
    optimizer = config.optimizer()
    trained, frozen = eqx.partition(model, trainable(model))
    opt_state = optimizer.init(trained)
    history = np.zeros(config.epochs)
    bar = tqdm(range(config.epochs), desc="VAENormalizer", unit="epoch", disable=not progress)
    for epoch in bar:
        key, order_key = jax.random.split(key)
        order = np.asarray(jax.random.permutation(order_key, n_cells))
        kl_weight = jnp.float32(config.kl_weight(epoch))
        losses = []
        for start in range(0, n_cells, batch_size):
            rows = order[start : start + batch_size]
            minibatch = make_minibatch(counts, rows, batches, batch_size, capacity)
            key, step_key = jax.random.split(key)
            trained, opt_state, loss = _step(
                trained, frozen, opt_state, minibatch, kl_weight, step_key, optimizer
            )
            losses.append(loss * len(rows))
        history[epoch] = float(sum(losses)) / n_cells
        bar.set_postfix(loss=f"{history[epoch]:.1f}", kl_weight=f"{float(kl_weight):.2f}")
    return eqx.combine(trained, frozen), history
