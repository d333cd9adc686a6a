"""Sharding rules: which mesh axes split which dimension of each parameter.

A leaf is named by its PyTree path (``jax.tree_util.keystr``), e.g.
``.stack.layers.query.weight``; optimizer-state leaves end with the path of the parameter
they track (``...mu.stack.layers.query.weight``), so the same rules place them.

* **Tensor parallel** (``model`` axis, Megatron-LM, Shoeybi et al., 2019): the query, key
  and value projections and the first MLP layer are split along their output units (whole
  heads and MLP hidden units per device), the attention output and second MLP layer along
  their input units, so each block needs one reduction after attention and one after the
  MLP. The ``model`` axis must divide the number of heads (`check_heads`), or a device
  would hold part of a head.
* **FSDP** (``fsdp`` axis, ZeRO-3, Rajbhandari et al., 2020): every parameter and optimizer
  state leaf is additionally split along its largest dimension that is still free and that
  the axis size divides; XLA gathers it where it is used.
* **Data parallel** (``data`` axis): parameters are replicated; only the batch is split.

The leading layer axis of the scanned stack (``.stack.layers.*``) is never split, so each
scan step reads whole layers. Fine-tuning's surgery is named like the plain model: the two
parts of a cut stack (``.stack.first.layers.*``, ``.stack.rest.layers.*``) like
``.stack.layers.*``, and the frozen base layer of a LoRA-wrapped projection
(``.query.base.weight``) like the projection itself (`rule_path`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretraining.mesh import BATCH_AXES
from zoo.common.transformer import TransformerBlock

TENSOR_PARALLEL_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"\.stack\.layers\.(query|key|value)\.weight$", (None, "model", None)),
    (r"\.stack\.layers\.(query|key|value)\.bias$", (None, "model")),
    (r"\.stack\.layers\.attention_output\.weight$", (None, None, "model")),
    (r"\.stack\.layers\.mlp_input\.weight$", (None, "model", None)),
    (r"\.stack\.layers\.mlp_input\.bias$", (None, "model")),
    (r"\.stack\.layers\.mlp_output\.weight$", (None, None, "model")),
)
STACKED = re.compile(r"\.stack\.layers\.")
CUT_STACK = re.compile(r"\.stack\.(?:first|rest)\.layers\.")
LORA_BASE = re.compile(r"\.(query|key|value|attention_output)\.base\.")


def rule_path(path: str) -> str:
    """`path` as the rules name it (see the module docstring)."""
    return LORA_BASE.sub(r".\1.", CUT_STACK.sub(".stack.layers.", path))


class ShardingError(ValueError):
    """A parameter cannot be split the way the mesh asks."""


def check_heads(n_heads: int, mesh: Mesh) -> None:
    """Raise `ShardingError` unless the mesh's ``model`` axis divides `n_heads`, so that
    tensor parallelism gives every device whole attention heads."""
    model = mesh.shape["model"]
    if n_heads % model:
        raise ShardingError(
            f"n_heads ({n_heads}) is not divisible by the mesh's model axis (model={model}): "
            "tensor parallelism splits whole heads; choose a model axis that divides "
            f"{n_heads}"
        )


def partition_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """The `PartitionSpec` of the leaf at `path` with `shape` (see the module docstring).

    Raises:
        ShardingError: when the ``model`` axis does not divide a dimension it must split
            (heads or MLP hidden units).
    """
    spec: list[str | None] = [None] * len(shape)
    path = rule_path(path)
    if mesh.shape["model"] > 1:
        for pattern, rule in TENSOR_PARALLEL_RULES:
            if re.search(pattern, path) and len(rule) == len(shape):
                spec = list(rule)
                dim = spec.index("model")
                if shape[dim] % mesh.shape["model"]:
                    raise ShardingError(
                        f"{path}: dimension {dim} of size {shape[dim]} cannot be split over "
                        f"model={mesh.shape['model']}; choose a model axis that divides the "
                        "number of heads and the MLP width"
                    )
                break
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1:
        first_free = 1 if STACKED.search(path) else 0
        free = [d for d in range(first_free, len(shape)) if spec[d] is None]
        divisible = [d for d in free if shape[d] % fsdp == 0]
        if divisible:
            spec[max(divisible, key=lambda d: shape[d])] = "fsdp"
    return PartitionSpec(*spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """A `NamedSharding` for every array leaf of `tree` (same structure), by
    `partition_spec`; non-array leaves map to None.

    Raises:
        ShardingError: the ``model`` axis does not divide the heads of a `TransformerBlock`
            in `tree` (`check_heads`) or a dimension that `partition_spec` splits.
    """
    blocks = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, TransformerBlock))
    for block in blocks:
        if isinstance(block, TransformerBlock):
            check_heads(block.n_heads, mesh)

    def place(path, leaf):
        if not hasattr(leaf, "shape"):
            return None
        spec = partition_spec(jax.tree_util.keystr(path), tuple(leaf.shape), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(place, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (example) axis over ``data`` and ``fsdp``; replicate the rest."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value."""
    return NamedSharding(mesh, PartitionSpec())
