"""Filling a `DifferentiableFoundationModel` with converted tensors: the last step of the
Geneformer and scGPT importers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from checkpoints.errors import CheckpointError
from checkpoints.tree_keys import named_leaves, replace_leaves
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)


def foundation_model_from_tensors(
    config: DifferentiableFoundationModelConfig, tensors: dict[str, np.ndarray], source: str
) -> DifferentiableFoundationModel:
    """The model of `config` holding `tensors` (flat keys of `checkpoints.tree_keys`,
    float32), built on an `eqx.filter_eval_shape` skeleton without a throw-away
    initialisation.

    Raises:
        CheckpointError: naming `source` and the missing keys, the keys the model has no
            place for, or the keys whose shapes differ from the config's.
    """
    skeleton = eqx.filter_eval_shape(DifferentiableFoundationModel, config, key=jax.random.key(0))
    expected = named_leaves(skeleton, _is_shape)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the converted tensors do not fit the model: missing {missing}, "
            f"unexpected {unexpected}"
        )
    wrong = sorted(
        f"{k} {tensors[k].shape} != {tuple(expected[k].shape)}"
        for k in tensors
        if tuple(tensors[k].shape) != tuple(expected[k].shape)
    )
    if wrong:
        raise CheckpointError(f"{source}: tensors with shapes the config does not give: {wrong}")
    values = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
    return replace_leaves(skeleton, _is_shape, values)


def _is_shape(leaf: object) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct)
