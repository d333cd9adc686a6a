"""The checkpoint folder: ``config.json`` + safetensors weights + ``README.md``.

``config.json`` holds ``{"format_version": 1, "architecture": <registry name>,
"config": <the architecture's Config.to_dict()>}``. The weights are ``model.safetensors``, or
above ``max_shard_size`` the shards and index of `checkpoints.shards`; every array leaf of
the model is stored under its flat key (`checkpoints.tree_keys`). ``README.md`` is the model
card (`checkpoints.card`). An expression model's folder also holds ``genes.tsv``, the genes
of its input columns (`zoo.expression.gene_vocabulary`).

Loading never runs code named by a file: the architecture name is looked up in
`zoo.registry`, the model's shapes come from `eqx.filter_eval_shape` (no initialisation is
computed), and the weights are checked key by key, shape by shape and dtype by dtype before
the model is assembled.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from checkpoints import placement, safetensors_format, shards
from checkpoints.card import CardDetails, render_card
from checkpoints.errors import CheckpointError
from checkpoints.references import Provenance, resolve
from checkpoints.tree_keys import named_leaves, replace_leaves
from checkpoints.upstream import load_upstream, read_json_object
from zoo.common.config import Config, ConfigError
from zoo.expression.gene_vocabulary import GENES_FILE, GeneMatchError, GeneVocabulary
from zoo.registry import UnknownArchitectureError, architecture_of, lookup

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = shards.SINGLE_FILE
CARD_FILE = "README.md"


def save_pretrained(
    model: eqx.Module,
    path: str | os.PathLike,
    *,
    card: str | CardDetails | None = None,
    max_shard_size: int | str = shards.DEFAULT_MAX_SHARD_SIZE,
    genes: GeneVocabulary | None = None,
) -> Path:
    """Write `model` as a checkpoint folder at `path` (created if needed).

    Args:
        model: a registered architecture (see `zoo.ARCHITECTURES`).
        path: the folder.
        card: the model card: Markdown used as is, or `CardDetails` (training and
            evaluation records, licence, ...) rendered with the config into the template;
            by default a card is rendered from the config alone.
        max_shard_size: bytes (or ``"2GB"``, ``"500MiB"``) above which the weights are
            split into shards with an index.
        genes: for an expression model, the genes of its input columns, in order; written
            as ``genes.tsv`` so that cells from other files can be lined up with them.

    Returns:
        The folder's path.

    Raises:
        CheckpointError: `genes` does not have one gene per input column of the model.
    """
    architecture = architecture_of(model)
    expression_config = getattr(model.config, "backbone", model.config)  # a TaskModel's backbone
    n_genes = getattr(getattr(expression_config, "tokenizer", None), "n_genes", None)
    if genes is not None and len(genes) != n_genes:
        raise CheckpointError(
            f"genes lists {len(genes):,} genes for a {architecture} that reads "
            f"{n_genes if n_genes is not None else 'no'} gene columns"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {key: np.asarray(value) for key, value in named_leaves(model, eqx.is_array).items()}
    metadata = {"format": "np"}  # one key: see `checkpoints.safetensors_format.write`
    shards.write(folder, arrays, metadata, max_shard_size)
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": model.config.to_dict(),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if not isinstance(card, str):
        card = render_card(architecture, model.config, card)
    (folder / CARD_FILE).write_text(card)
    if genes is not None:
        genes.write(folder / GENES_FILE)
    return folder


def read_genes(folder: str | os.PathLike) -> GeneVocabulary | None:
    """The gene vocabulary a checkpoint folder carries (``genes.tsv``), or None."""
    path = Path(folder) / GENES_FILE
    if not path.is_file():
        return None
    try:
        return GeneVocabulary.read(path)
    except GeneMatchError as error:
        raise CheckpointError(str(error)) from None


def read_config(folder: Path) -> tuple[str, Config]:
    """The architecture name and validated config object of a checkpoint folder."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}; it is not a checkpoint folder")
    data = read_json_object(path)
    if "model_type" in data and "format_version" not in data:
        raise CheckpointError(
            f"{path} is a transformers config (model_type {data['model_type']!r}), not a biozoo "
            "checkpoint; convert BERT checkpoints with checkpoints.import_bert"
        )
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


@functools.lru_cache(maxsize=16)
def skeleton(architecture: str, config: Config) -> eqx.Module:
    """The model's structure with `jax.ShapeDtypeStruct` leaves: nothing is initialised."""
    model_class, _ = lookup(architecture)
    return eqx.filter_eval_shape(model_class, config, key=jax.random.key(0))


def abstract_model(folder: str | os.PathLike) -> eqx.Module:
    """The model of the checkpoint folder `folder` with a `jax.ShapeDtypeStruct` in place of
    each array (nothing is read or initialised): map it to the shardings for `load_folder`."""
    return skeleton(*read_config(Path(folder)))


def open_weights(
    folder: Path,
) -> tuple[eqx.Module, dict[str, safetensors_format.StoredTensor]]:
    """The skeleton of the checkpoint in `folder` and its opened, validated weights,
    checked against the skeleton (no tensor bytes are read yet)."""
    architecture, config = read_config(folder)
    model = skeleton(architecture, config)
    try:
        tensors = shards.open_all(folder)
    except FileNotFoundError as error:
        raise CheckpointError(str(error)) from None
    except (safetensors_format.CorruptWeightsError, shards.ShardIndexError) as error:
        raise CheckpointError(str(error)) from None
    check_weights(folder, named_leaves(model, _is_shape), tensors)
    return model, tensors


def load_folder(folder: str | os.PathLike, *, shardings: Any = None) -> eqx.Module:
    """The model in the checkpoint folder `folder`, every array bit-equal to the saved one.

    Args:
        folder: a checkpoint folder.
        shardings: None (each array on the default device), one `jax.sharding.Sharding`
            for every array, or a PyTree shaped like the model with a `Sharding` in place of
            each array; each device then reads only its own slice (see
            `checkpoints.placement`).
    """
    model, tensors = open_weights(Path(folder))
    by_key = None if shardings is None else placement.shardings_by_key(shardings, list(tensors))
    return replace_leaves(model, _is_shape, placement.place(tensors, by_key))


def from_pretrained(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | None = None,
    shardings: Any = None,
    with_provenance: bool = False,
) -> eqx.Module | tuple[eqx.Module, Provenance]:
    """Load a model from a local folder, a catalog short name or a Hub repository.

    A folder (or Hub repository) in the layout of a published upstream model
    (`checkpoints.upstream.FAMILIES`: ``config.json`` + ``model.safetensors`` + its
    vocabulary, as on the Hub) is recognised from its files and converted on load.

    Args:
        ref: a checkpoint folder; a short name from `checkpoints.catalog.CATALOG`; or a Hub
            repo id ``org/name``, optionally with a folder inside it and a revision,
            ``org/name[/sub/folder][@revision]`` (branch, tag, commit or ``refs/pr/N``).
        revision: the Hub revision, instead of ``@revision``; unpinned loads (anything but
            a full commit SHA) warn with `UnpinnedRevisionWarning`.
        cache_dir: the Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: never use the network (as ``HF_HUB_OFFLINE=1``): load the
            revision from the cache or fail naming it.
        token: a Hub token for private repositories (default ``HF_TOKEN`` or the saved
            login); it is never printed, logged or written anywhere.
        shardings: where to place the arrays (see `load_folder`; biozoo checkpoints only).
        with_provenance: also return the `Provenance`: the folder read, the upstream
            family converted (if any) and, for Hub and catalog checkpoints, the repo id and
            the resolved commit SHA.

    Returns:
        The model, or ``(model, provenance)`` with ``with_provenance=True``.

    Raises:
        CheckpointError: for a reference that resolves to nothing, a revision missing from
            the cache while offline, a corrupted download (naming the file and how to fetch
            it again), an unknown architecture or config field, missing, unexpected or
            mismatched weights (listing every offending key), or an upstream model whose
            weights are only a pickle (saying what to load instead).
    """
    folder, provenance = resolve(
        ref, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    if provenance.family is None:
        model = load_folder(folder, shardings=shardings)
    elif shardings is not None:
        raise CheckpointError(
            f"{ref} is an upstream {provenance.family} model, converted on load; shardings "
            "apply to biozoo checkpoints: save_pretrained the converted model and load that"
        )
    else:
        model = load_upstream(folder, provenance.family)
    return (model, provenance) if with_provenance else model


def _is_shape(leaf: Any) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct)


def check_weights(
    path: Path,
    expected: dict[str, jax.ShapeDtypeStruct],
    found: dict[str, safetensors_format.StoredTensor],
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
