"""Weights split over several safetensors files, laid out as the Hugging Face Hub does.

At or below ``max_shard_size`` bytes the weights are one ``model.safetensors``. Above it,
they are split by ``huggingface_hub``'s own rule (tensors in key order fill a shard until
the next would overflow it; a tensor larger than the limit gets a shard of its own) into
``model-00001-of-0000n.safetensors`` ... and ``model.safetensors.index.json`` maps every key
to its file::

    {"metadata": {"total_size": <bytes of all tensors>}, "weight_map": {key: file, ...}}

Sizes are bytes or strings as in ``transformers``: ``"2GB"`` is 2·10⁹ bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from huggingface_hub.serialization import split_state_dict_into_shards_factory

from checkpoints import safetensors_format

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
DEFAULT_MAX_SHARD_SIZE = "2GB"


class ShardIndexError(ValueError):
    """A shard index is malformed or disagrees with the shard files."""


def is_weight_file(name: str) -> bool:
    """Whether `name` is a weight file name: the single file, the index or a shard."""
    return name in (SINGLE_FILE, INDEX_FILE) or SHARD_NAME.fullmatch(name) is not None


def weight_file_names(folder: Path) -> list[str]:
    """Names of the weight files present in `folder`."""
    return sorted(p.name for p in folder.iterdir() if is_weight_file(p.name))


def write(
    folder: Path,
    arrays: dict[str, np.ndarray],
    metadata: dict[str, str],
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[str]:
    """Write `arrays` into `folder` as one file or as shards plus an index, removing weight
    files of an earlier save that the new layout does not use. Returns the names written."""
    if isinstance(max_shard_size, int) and max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    split = split_state_dict_into_shards_factory(
        dict(sorted(arrays.items())),
        get_storage_size=lambda array: array.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    written = []
    for name, keys in (split.filename_to_tensors or {SINGLE_FILE: []}).items():
        safetensors_format.write(folder / name, {k: arrays[k] for k in keys}, metadata)
        written.append(name)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(INDEX_FILE)
    for stale in set(weight_file_names(folder)) - set(written):
        (folder / stale).unlink()
    return written


def files_of(folder: Path) -> list[str]:
    """The weight files a load of `folder` reads: the single file, or the index's shards.

    Raises:
        FileNotFoundError: if `folder` holds neither layout.
        ShardIndexError: if it holds both, or the index is malformed.
    """
    has_single = (folder / SINGLE_FILE).is_file()
    has_index = (folder / INDEX_FILE).is_file()
    if has_single and has_index:
        raise ShardIndexError(
            f"{folder} holds both {SINGLE_FILE} and {INDEX_FILE}; remove the one that is stale"
        )
    if has_single:
        return [SINGLE_FILE]
    if not has_index:
        raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    return sorted(set(read_index(folder).values()))


def read_index(folder: Path) -> dict[str, str]:
    """The index's ``{key: shard file name}``; every name must be a shard name, so an index
    can never point outside its folder."""
    path = folder / INDEX_FILE
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ShardIndexError(f"{path} is not a shard index: {error!r}") from None
    if not isinstance(weight_map, dict):
        raise ShardIndexError(f"{path}: weight_map must be an object")
    bad = sorted({str(f) for f in weight_map.values() if not SHARD_NAME.fullmatch(str(f))})
    if bad:
        raise ShardIndexError(f"{path} names files that are not shards: {bad}")
    return weight_map


def open_all(folder: Path) -> dict[str, safetensors_format.StoredTensor]:
    """Every tensor of `folder`'s weights, whichever the layout, opened and validated but not
    read yet (see `safetensors_format.open_file`); with shards, each file must hold exactly
    the keys the index gives it."""
    names = files_of(folder)
    if names == [SINGLE_FILE]:
        return safetensors_format.open_file(folder / SINGLE_FILE)[0]
    weight_map = read_index(folder)
    tensors: dict[str, safetensors_format.StoredTensor] = {}
    for name in names:
        shard, _ = safetensors_format.open_file(folder / name)
        listed = {k for k, f in weight_map.items() if f == name}
        extra, missing = sorted(set(shard) - listed), sorted(listed - set(shard))
        if extra or missing:
            raise ShardIndexError(
                f"{folder / name} disagrees with {INDEX_FILE}: it holds {extra} that the index "
                f"does not list for it and lacks {missing} that the index lists for it"
            )
        tensors |= shard
    return tensors
