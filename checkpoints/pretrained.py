"""The checkpoint folder: ``config.json`` + ``model.safetensors`` + ``README.md``.

``config.json`` holds ``{"format_version": 1, "architecture": <registry name>,
"config": <the architecture's Config.to_dict()>}``. ``model.safetensors`` holds every array
leaf of the model under its flat key (`checkpoints.tree_keys`). ``README.md`` is the model
card.

Loading never runs code named by a file: the architecture name is looked up in
`zoo.registry`, the model's shapes come from `eqx.filter_eval_shape` (no initialisation is
computed), and the weights are checked key by key, shape by shape and dtype by dtype before
the model is assembled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from checkpoints import safetensors_format
from checkpoints.card import render_card
from checkpoints.tree_keys import named_leaves, replace_leaves
from zoo.config import ConfigError
from zoo.registry import UnknownArchitectureError, architecture_of, lookup

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


class CheckpointError(ValueError):
    """A checkpoint folder cannot be turned into a model; the message says why."""


def save_pretrained(model: eqx.Module, path: str | os.PathLike, *, card: str | None = None) -> Path:
    """Write `model` as a checkpoint folder at `path` (created if needed).

    Args:
        model: a registered architecture (see `zoo.ARCHITECTURES`).
        path: the folder.
        card: the model card's Markdown; by default a minimal card is rendered from the
            config.

    Returns:
        The folder's path.
    """
    architecture = architecture_of(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = named_leaves(model, eqx.is_array)
    safetensors_format.write(
        folder / WEIGHTS_FILE,
        {key: np.asarray(value) for key, value in arrays.items()},
        metadata={"format": "np", "architecture": architecture},
    )
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": model.config.to_dict(),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(
        card if card is not None else render_card(architecture, model.config)
    )
    return folder


def read_config(folder: Path) -> tuple[str, Any]:
    """The architecture name and validated config object of a checkpoint folder."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}; it is not a checkpoint folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    try:
        _, config_class = lookup(data.get("architecture"))
        return data["architecture"], config_class.from_dict(data.get("config", {}))
    except (UnknownArchitectureError, ConfigError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def from_pretrained(path: str | os.PathLike) -> eqx.Module:
    """Rebuild the model saved in the checkpoint folder `path`; every array leaf is
    bit-equal to the saved one.

    Raises:
        CheckpointError: for an unknown architecture, an unknown config field, missing or
            unexpected weights, shape or dtype mismatches, or a corrupted weights file;
            the message lists every offending key.
    """
    folder = Path(path)
    architecture, config = read_config(folder)
    model_class, _ = lookup(architecture)
    skeleton = eqx.filter_eval_shape(model_class, config, key=jax.random.key(0))
    try:
        arrays, _ = safetensors_format.read(folder / WEIGHTS_FILE)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}") from None
    except safetensors_format.CorruptWeightsError as error:
        raise CheckpointError(str(error)) from None
    expected = named_leaves(skeleton, _is_shape)
    check_weights(folder / WEIGHTS_FILE, expected, arrays)
    return replace_leaves(skeleton, _is_shape, {key: jnp.asarray(arrays[key]) for key in expected})


def _is_shape(leaf: Any) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct)


def check_weights(
    path: Path, expected: dict[str, jax.ShapeDtypeStruct], found: dict[str, np.ndarray]
) -> None:
    """Raise `CheckpointError` listing every missing, unexpected or mismatched tensor."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for key in sorted(set(expected) & set(found)):
        want, got = expected[key], found[key]
        if tuple(want.shape) != got.shape:
            problems.append(
                f"{key}: shape {got.shape} in the file, the model needs {tuple(want.shape)}"
            )
        elif np.dtype(want.dtype) != got.dtype:
            problems.append(
                f"{key}: dtype {got.dtype} in the file, the model needs {np.dtype(want.dtype)}"
            )
    if problems:
        raise CheckpointError(f"{path} does not match its config:\n  " + "\n  ".join(problems))
