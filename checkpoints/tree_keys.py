"""Flat names for the array leaves of a model, the keys of its safetensors file.

A key is the model's PyTree path to the array, attribute names and sequence indices joined
by dots: ``stack.layers.query.weight`` is the stacked query weights of every transformer
layer, ``first.bias`` a convolution's bias. Fields that are None hold no key. Arrays stacked
with `eqx.filter_vmap` (scanned layers) keep their leading layer axis in one tensor.
"""

from __future__ import annotations

from typing import Any

import jax


def key_of(path: tuple[Any, ...]) -> str:
    """The flat key of one PyTree path."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        else:
            raise TypeError(f"cannot name PyTree path entry {entry!r}")
    return ".".join(parts)


def named_leaves(tree: Any, is_array) -> dict[str, Any]:
    """``{key: leaf}`` for every leaf of `tree` for which `is_array(leaf)` holds."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {key_of(path): leaf for path, leaf in leaves if is_array(leaf)}


def replace_leaves(tree: Any, is_array, values: dict[str, Any]) -> Any:
    """`tree` with each leaf for which `is_array` holds replaced by ``values[key]``."""

    def replace(path, leaf):
        return values[key_of(path)] if is_array(leaf) else leaf

    return jax.tree_util.tree_map_with_path(replace, tree)
