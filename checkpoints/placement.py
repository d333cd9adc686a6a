"""Putting the tensors of an opened checkpoint onto devices.

Without shardings each tensor is read whole and goes to the default device. With
shardings, every array is built by `jax.make_array_from_callback`: each device's piece is
read on its own (`checkpoints.safetensors_format.StoredTensor.read`), so only that slice's
bytes are copied out of the memory-mapped file, no host ever holds a full copy of a split
array, and a model larger than one device still loads. Every piece is copied into fresh
memory, so the model never aliases (and cannot be changed through) the file.

Each piece arrives in fresh memory aligned to 64 bytes, which XLA's CPU client adopts as
its buffer without another copy.
"""

from __future__ import annotations

from typing import Any

import jax

from checkpoints.safetensors_format import StoredTensor
from checkpoints.tree_keys import named_leaves


def is_sharding(leaf: Any) -> bool:
    """Whether `leaf` is a `jax.sharding.Sharding`."""
    return isinstance(leaf, jax.sharding.Sharding)


def shardings_by_key(shardings: Any, keys: list[str]) -> dict[str, jax.sharding.Sharding]:
    """``{key: sharding}`` from one `Sharding` for every array, or from a PyTree shaped like
    the model whose array leaves are replaced by `Sharding`s.

    Raises:
        ValueError: naming the keys the tree gives no sharding to, or keys it has extra.
    """
    if is_sharding(shardings):
        return dict.fromkeys(keys, shardings)
    found = named_leaves(shardings, is_sharding)
    missing, extra = sorted(set(keys) - set(found)), sorted(set(found) - set(keys))
    if missing or extra:
        raise ValueError(
            f"shardings do not match the model: no sharding for {missing}; "
            f"shardings for arrays the model does not have: {extra}"
        )
    return found


def place(
    tensors: dict[str, StoredTensor], shardings: dict[str, jax.sharding.Sharding] | None
) -> dict[str, jax.Array]:
    """Device arrays of `tensors`, whole on the default device or split by `shardings`
    (each device's slice read from the file on its own)."""
    if shardings is None:
        return {key: jax.device_put(tensor.read()) for key, tensor in tensors.items()}
    return {
        key: jax.make_array_from_callback(tensor.shape, shardings[key], tensor.read)
        for key, tensor in tensors.items()
    }
