"""Low-rank adaptation (LoRA; Hu et al., 2021) of the attention projections.

`LoRALinear` wraps a linear layer ``W`` with trainable factors ``A`` (rank x in) and ``B``
(out x rank) and behaves as the layer with weight ``W + (alpha / rank) * B @ A``. ``B``
starts at zero, so an adapted model starts out computing exactly what the original does.
Works on stacked (scanned) layers too: every array then has the leading layer axis.

`add_lora` wraps the query, key, value and output projections of every transformer block
in a model; `merge_lora` folds the factors back into plain `eqx.nn.Linear` weights for
export.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from zoo.common.transformer import TransformerBlock

PROJECTIONS = ("query", "key", "value", "attention_output")


class LoRALinear(eqx.Module):
    """A linear layer plus a low-rank update (see the module docstring)."""

    base: eqx.nn.Linear
    lora_a: Float[Array, "... rank d_in"]
    lora_b: Float[Array, "... d_out rank"]
    scale: float = eqx.field(static=True)

    def __init__(self, base: eqx.nn.Linear, rank: int, alpha: float, *, key: PRNGKeyArray):
        *stack, d_out, d_in = base.weight.shape
        self.base = base
        self.lora_a = jax.random.normal(key, (*stack, rank, d_in)) / jnp.sqrt(d_in)
        self.lora_b = jnp.zeros((*stack, d_out, rank))
        self.scale = alpha / rank

    @property
    def weight(self) -> Float[Array, "... d_out d_in"]:
        """The adapted weight ``W + scale * B @ A``."""
        return self.base.weight + self.scale * self.lora_b @ self.lora_a

    @property
    def bias(self) -> Float[Array, "... d_out"] | None:
        """The base layer's bias."""
        return self.base.bias

    def __call__(self, x: Float[Array, " d_in"]) -> Float[Array, " d_out"]:
        """Apply the adapted layer to one vector."""
        out = self.weight @ x
        return out if self.bias is None else out + self.bias

    def merged(self) -> eqx.nn.Linear:
        """The plain linear layer with the update folded into its weight."""
        return eqx.tree_at(lambda layer: layer.weight, self.base, self.weight)


def _is_block(node) -> bool:
    return isinstance(node, TransformerBlock)


def add_lora(model: eqx.Module, rank: int, alpha: float, *, key: PRNGKeyArray) -> eqx.Module:
    """`model` with every transformer block's attention projections wrapped in `LoRALinear`."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    blocks = [b for b in jax.tree.leaves(model, is_leaf=_is_block) if _is_block(b)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to adapt")
    keys = iter(jax.random.split(key, len(blocks) * len(PROJECTIONS)))

    def adapt(node):
        if not _is_block(node):
            return node
        layers = [
            LoRALinear(getattr(node, name), rank, alpha, key=next(keys)) for name in PROJECTIONS
        ]
        return eqx.tree_at(lambda b: [getattr(b, n) for n in PROJECTIONS], node, layers)

    return jax.tree.map(adapt, model, is_leaf=_is_block)


def _is_lora(node) -> bool:
    return isinstance(node, LoRALinear)


def merge_lora(model: eqx.Module) -> eqx.Module:
    """`model` with every `LoRALinear` replaced by its merged plain linear layer."""
    return jax.tree.map(lambda n: n.merged() if _is_lora(n) else n, model, is_leaf=_is_lora)


def lora_filter(model: eqx.Module) -> eqx.Module:
    """A filter spec (the structure of `model`) that is True only on the LoRA factors."""
    spec = jax.tree.map(lambda _: False, model)

    def mark(node):
        if not _is_lora(node):
            return node
        return eqx.tree_at(lambda n: (n.lora_a, n.lora_b), node, (True, True))

    return jax.tree.map(mark, spec, is_leaf=_is_lora)
