"""`VAENormalizer` on cells given as an AnnData or as arrays: fitting and outputs, on input
checked by `zoo.vae.inputs`.

The counts are ``adata.X`` or ``adata.layers[layer]`` (or a dense / scipy sparse array), raw
and integer. Batches are named by ``batch_key``: an ``adata.obs`` column, or the labels
themselves (one per cell). Outputs go where scanpy keeps them (`annotate_vae`):
``adata.obsm["X_vae"]`` (latent mean), ``adata.layers["vae_normalized"]`` (normalized
expression) and ``adata.obs["vae_elbo"]`` (per-cell ELBO).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from zoo.vae.inputs import read_batches, read_counts
from zoo.vae.model import VAENormalizer, VAENormalizerConfig
from zoo.vae.training import DEFAULT_TRAINING, VAETrainingConfig, train_vae

CHUNK = 512  # cells per compiled call when computing outputs


def fit_vae(
    data,
    *,
    key: PRNGKeyArray,
    layer: str | None = None,
    batch_key: str | Sequence | np.ndarray | None = None,
    training: VAETrainingConfig = DEFAULT_TRAINING,
    progress: bool = True,
    **architecture,
) -> VAENormalizer:
    """Build and train a `VAENormalizer` on the raw counts of `data`.

    Args:
        data: an AnnData or a ``(cells, genes)`` count matrix (dense or scipy sparse).
        key: drives initialisation and training.
        layer: the AnnData layer holding raw counts (default ``adata.X``).
        batch_key: an obs column or per-cell labels naming each cell's batch.
        training: optimisation settings.
        progress: show a progress bar.
        **architecture: `VAENormalizerConfig` fields other than ``n_genes`` and
            ``batch_labels`` (which come from the data), e.g. ``likelihood="nb"``. With
            ``library="latent"`` the library prior is the per-batch empirical one
            (`zoo.vae.inputs.library_moments`).

    Returns:
        The trained model.

    Raises:
        ValueError: for bad counts or batches (`zoo.vae.inputs.read_counts`, `read_batches`).
    """
    counts = read_counts(data, layer)
    labels, batches = read_batches(data, batch_key)
    config = VAENormalizerConfig(n_genes=counts.shape[1], batch_labels=labels, **architecture)
    init_key, train_key = jax.random.split(key)
    model = VAENormalizer(config, key=init_key)
    model, _ = train_vae(model, counts, batches, training, key=train_key, progress=progress)
    return model


def _model_input(model: VAENormalizer, data, layer, batch_key):
    if not model.library_prior_is_set:
        raise ValueError(
            "model: its latent library prior is unset; train it or call with_library_prior"
        )
    counts = read_counts(data, layer)
    if counts.shape[1] != model.config.n_genes:
        raise ValueError(
            f"data has {counts.shape[1]} genes, the model expects {model.config.n_genes}"
        )
    return counts, read_batches(data, batch_key, model.config.batch_labels)[1]


@eqx.filter_jit
def _apply(model, fn, counts, batches, keys):
    return jax.vmap(lambda x, b, k: fn(model, x, b, k))(counts, batches, keys)


def _per_cell(fn: Callable, model: VAENormalizer, counts, batches, key) -> np.ndarray:
    """``fn(model, counts_row, batch, key)`` for every cell, in padded chunks of `CHUNK`."""
    n_cells = counts.shape[0]
    chunk = min(CHUNK, n_cells)
    outputs = []
    for start in range(0, n_cells, chunk):
        rows = np.arange(start, min(start + chunk, n_cells))
        padded = np.pad(rows, (0, chunk - len(rows)), mode="edge")
        block = counts[padded]
        block = block.toarray() if hasattr(block, "toarray") else block
        keys = jax.random.split(jax.random.fold_in(key, start), chunk)
        out = _apply(model, fn, jnp.asarray(block), jnp.asarray(batches[padded]), keys)
        outputs.append(np.asarray(out)[: len(rows)])
    return np.concatenate(outputs)


def _latent(model: VAENormalizer, x, batch, key):
    return model(x, batch)


def _elbo(model: VAENormalizer, x, batch, key):
    return model.elbo_terms(x, batch, key=key).elbo


def latent_mean(model: VAENormalizer, data, *, layer=None, batch_key=None) -> np.ndarray:
    """``(cells, n_latent)`` posterior means of ``z``: the cells' representation."""
    counts, batches = _model_input(model, data, layer, batch_key)
    return _per_cell(_latent, model, counts, batches, jax.random.key(0))


def normalized_expression(
    model: VAENormalizer,
    data,
    *,
    layer=None,
    batch_key=None,
    target_library: float = 1e4,
    transform_batch: str | None = None,
) -> np.ndarray:
    """``(cells, genes)`` decoded proportions times `target_library`, each cell decoded in
    its own batch or, if given, in the batch labelled `transform_batch`.

    Raises:
        ValueError: for a `target_library` that is not positive, a `transform_batch` the
            model does not know, or bad counts or batches.
    """
    if not (np.isfinite(target_library) and target_library > 0):
        raise ValueError(f"target_library must be a positive number, got {target_library}")
    counts, batches = _model_input(model, data, layer, batch_key)
    labels = model.config.batch_labels
    if transform_batch is not None and transform_batch not in labels:
        raise ValueError(f"transform_batch {transform_batch!r} is not among {list(labels)}")
    target = None if transform_batch is None else labels.index(transform_batch)

    def fn(m, x, b, k):
        return m.normalized_expression(x, b, target_library=target_library, transform_batch=target)

    return _per_cell(fn, model, counts, batches, jax.random.key(0))


def cell_elbo(
    model: VAENormalizer, data, *, key: PRNGKeyArray, layer=None, batch_key=None
) -> np.ndarray:
    """``(cells,)`` ELBO of each cell (one latent sample drawn with `key`); scvi-tools'
    ``get_elbo`` is minus its mean."""
    counts, batches = _model_input(model, data, layer, batch_key)
    return _per_cell(_elbo, model, counts, batches, key)


def annotate_vae(
    model: VAENormalizer,
    adata,
    *,
    key: PRNGKeyArray,
    layer: str | None = None,
    batch_key: str | None = None,
    target_library: float = 1e4,
    transform_batch: str | None = None,
    key_added: str = "vae",
) -> None:
    """Write the latent means to ``adata.obsm["X_<key_added>"]``, the normalized expression
    to ``adata.layers["<key_added>_normalized"]`` and the ELBO to
    ``adata.obs["<key_added>_elbo"]`` (arguments as in `normalized_expression`)."""
    where = {"layer": layer, "batch_key": batch_key}
    adata.obsm[f"X_{key_added}"] = latent_mean(model, adata, **where)
    adata.layers[f"{key_added}_normalized"] = normalized_expression(
        model, adata, target_library=target_library, transform_batch=transform_batch, **where
    )
    adata.obs[f"{key_added}_elbo"] = cell_elbo(model, adata, key=key, **where)
