"""Putting the tensors read from a checkpoint onto devices.

Without shardings each tensor goes to the default device whole. With shardings, every
array is built by `jax.make_array_from_callback`: each device receives only its own slice,
copied out of the memory-mapped file, so no host ever holds a full copy of the model and a
model larger than one device still loads. Each piece is copied once, into fresh aligned
memory, so the model never aliases (and cannot be changed through) the file.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from checkpoints.tree_keys import named_leaves

ALIGNMENT = 64  # bytes; XLA's CPU client adopts host buffers aligned this way


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


def host_copy(view: np.ndarray) -> np.ndarray:
    """A private copy of `view` in fresh memory aligned to 64 bytes, which a CPU device can
    adopt without copying again; a loaded model never aliases the file it came from."""
    raw = np.empty(view.nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    out = raw[start : start + view.nbytes].view(view.dtype).reshape(view.shape)
    np.copyto(out, view)
    return out


def place(
    arrays: dict[str, np.ndarray], shardings: dict[str, jax.sharding.Sharding] | None
) -> dict[str, jax.Array]:
    """Device arrays of `arrays`, whole on the default device or split by `shardings`."""
    if shardings is None:
        return {key: jax.device_put(host_copy(array)) for key, array in arrays.items()}
    return {
        key: jax.make_array_from_callback(
            array.shape, shardings[key], lambda index, a=array: host_copy(a[index])
        )
        for key, array in arrays.items()
    }
