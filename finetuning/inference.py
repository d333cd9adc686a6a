"""Running a model over a user's data in batches, data parallel over the devices.

`ShardedMap` applies a per-example function of the model to batches whose example axis is
split over the mesh's data axes (`pretraining.sharding.batch_sharding`), the model
replicated. Batches are padded to a fixed size (a multiple of the data axes) and sequences
to a length bucket (the next multiple of 64, at most the model's ``max_len``), so a few
compilations serve a whole file. `embed_batches` and `output_batches` give the pooled (or
per-token) embeddings and the task outputs of `finetuning.user_inputs.InputBatch` es, with a
tqdm progress bar.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from finetuning.train import backbone_inputs
from finetuning.user_inputs import InputBatch
from pretraining.mesh import batch_shards, make_mesh
from pretraining.sharding import batch_sharding, replicated
from zoo.expression.gene_vocabulary import GeneVocabulary
from zoo.sequence.encoder import TransformerSequenceEncoder
from zoo.task.model import TaskModel, backbone_embedding

LENGTH_BUCKET = 64


def load_model(
    model: Any, *, inference: bool = True
) -> tuple[eqx.Module, dict[str, Any], GeneVocabulary | None]:
    """The model (in inference mode unless `inference` is False), its provenance and its genes.

    Args:
        model: a checkpoint reference (folder, catalog name, ``org/name@rev``) or a loaded
            model.
        inference: switch dropout off.

    Returns:
        ``(model, provenance, genes)``; provenance holds ``model`` (the reference),
        ``source``, ``repo_id``, ``revision``, ``commit`` (the resolved commit SHA, when from
        the Hub) and ``sha256`` (verified file digests, for catalog checkpoints); genes is
        the gene vocabulary of an expression checkpoint (``genes.tsv``), else None.
    """
    if isinstance(model, (str, os.PathLike)):
        import checkpoints

        loaded, found = checkpoints.from_pretrained(str(model), with_provenance=True)
        provenance = {
            "model": str(model),
            "source": found.source,
            "repo_id": found.repo_id,
            "revision": found.revision,
            "commit": found.commit,
            "sha256": dict(found.sha256),
        }
        genes = checkpoints.read_genes(found.folder)
    else:
        loaded, genes = model, None
        provenance = {"model": f"in-memory {type(model).__name__}", "source": "python"}
    return eqx.nn.inference_mode(loaded, value=inference), provenance, genes


def backbone_of(model: eqx.Module) -> eqx.Module:
    """The representation model inside `model` (itself unless it is a `zoo.TaskModel`)."""
    return model.backbone if isinstance(model, TaskModel) else model


class ShardedMap:
    """``jax.vmap(function)(model, *inputs)`` batch by batch, the batch split over the data
    axes of `mesh` (default: every device data parallel) and `model` replicated.

    Args:
        function: ``function(model, *example) -> output`` for one example.
        model: the model (its arrays are placed once on every device).
        batch_size: examples per call; rounded up to a multiple of the data axes.
        mesh: the device mesh.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        model: eqx.Module,
        batch_size: int,
        mesh: Mesh | None = None,
    ):
        mesh = make_mesh("") if mesh is None else mesh
        shards = batch_shards(mesh)
        self.batch_size = -(-batch_size // shards) * shards
        params, static = eqx.partition(model, eqx.is_array)
        self.params = jax.device_put(params, replicated(mesh))

        def batched(params, *inputs):
            net = eqx.combine(params, static)
            return jax.vmap(lambda *x: function(net, *x))(*inputs)

        sharded = batch_sharding(mesh)
        self._call = jax.jit(batched, out_shardings=sharded)
        self._input_sharding = sharded

    def __call__(self, *inputs: np.ndarray) -> Any:
        """The outputs of every example of `inputs` (at most `batch_size` of them), as
        numpy arrays."""
        n = len(inputs[0])
        rows = np.minimum(np.arange(self.batch_size), n - 1)  # pad by repeating the last
        placed = [jax.device_put(x[rows], self._input_sharding) for x in inputs]
        outputs = jax.device_get(self._call(self.params, *placed))
        return jax.tree.map(lambda x: np.asarray(x)[:n], outputs)


def model_arrays(backbone: eqx.Module, inputs: list[str] | np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays `backbone` reads for `inputs`, sequences padded to a length bucket."""
    arrays = backbone_inputs(backbone, inputs)
    if isinstance(inputs, np.ndarray):
        return arrays
    length = arrays[0].shape[1]
    bucket = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
    if isinstance(backbone, TransformerSequenceEncoder):
        bucket = min(bucket, backbone.config.max_len)
    pad = [(0, 0), (0, bucket - length)]
    return tuple(np.pad(x, pad + [(0, 0)] * (x.ndim - 2)) for x in arrays)


def _pooled(model, *inputs):
    return backbone_embedding(model, *inputs)


def _per_token(model, *inputs):
    return model(*inputs).hidden


def embed_batches(
    model: eqx.Module,
    batches: Iterable[InputBatch],
    *,
    per_token: bool = False,
    batch_size: int = 64,
    total: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Iterator[tuple[InputBatch, list[np.ndarray] | np.ndarray]]:
    """Yield each batch with its embeddings: pooled ``(n, dim)``, or with `per_token` a
    list of ``(n_tokens_i, dim)`` hidden states (``[CLS]`` first, padding dropped).

    Raises:
        ValueError: `per_token` for another model than a `zoo.TransformerSequenceEncoder`.
    """
    backbone = backbone_of(model)
    if per_token and not isinstance(backbone, TransformerSequenceEncoder):
        raise ValueError("per-token embeddings are for transformer sequence encoders")
    apply = ShardedMap(_per_token if per_token else _pooled, backbone, batch_size, mesh)
    batches = _rebatched(batches, apply.batch_size)
    with tqdm(total=total, desc="embed", unit="example", disable=not progress) as bar:
        for batch in batches:
            arrays = model_arrays(backbone, batch.inputs)
            outputs = apply(*arrays)
            if per_token:
                mask = arrays[1]
                outputs = [hidden[row] for hidden, row in zip(outputs, mask, strict=True)]
            bar.update(len(batch.names))
            yield batch, outputs


def output_batches(
    model: TaskModel,
    batches: Iterable[InputBatch],
    *,
    batch_size: int = 64,
    total: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Iterator[tuple[InputBatch, np.ndarray]]:
    """Yield each batch with the task model's outputs: class probabilities ``(n,
    n_classes)`` or predicted targets ``(n, n_outputs)``."""
    if not isinstance(model, TaskModel):
        raise ValueError(
            f"predictions need a fine-tuned model (a TaskModel), got a {type(model).__name__}"
        )
    regression = model.config.task == "regression"

    def outputs(net, *x):
        y = net(*x)
        return y if regression else jax.nn.softmax(y)

    apply = ShardedMap(outputs, model, batch_size, mesh)
    batches = _rebatched(batches, apply.batch_size)
    with tqdm(total=total, desc="predict", unit="example", disable=not progress) as bar:
        for batch in batches:
            values = apply(*model_arrays(model.backbone, batch.inputs))
            bar.update(len(batch.names))
            yield batch, np.asarray(values, np.float64)


def _rebatched(batches: Iterable[InputBatch], size: int) -> Iterator[InputBatch]:
    """The examples of `batches` again, at most `size` at a time. The first batch is read
    (and checked) at once, so bad input fails before a progress bar is drawn."""
    batches = iter(batches)
    first = next(batches, None)
    return _split_batches(itertools.chain([] if first is None else [first], batches), size)


def _split_batches(batches: Iterable[InputBatch], size: int) -> Iterator[InputBatch]:
    for batch in batches:
        for start in range(0, len(batch.names), size):
            part = slice(start, start + size)
            yield InputBatch(
                batch.names[part],
                batch.rows[part],
                batch.inputs[part],
                None if batch.labels is None else batch.labels[part],
                None if batch.splits is None else batch.splits[part],
            )
