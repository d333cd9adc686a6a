"""The optimiser: AdamW (Loshchilov & Hutter, 2019) with linear warm-up and cosine decay,
global-norm gradient clipping, and no update for fitted statistics.

Parameters are kept in float32; with ``compute_dtype="bfloat16"`` the forward and backward
passes run on a bfloat16 copy (`cast_for_compute`) and the float32 master weights are
updated. Gradient accumulation is done by the train step (`pretraining.train`), which
averages ``accumulate_steps`` micro-batch gradients before one optimiser update.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.common.config import Config, require, require_choice, require_positive, require_probability

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
FROZEN = re.compile(r"\.tokenizer\.")  # the gene medians are fitted, not trained
NO_DECAY = re.compile(r"(norm\.(weight|bias)|\.bias|mlm_bias|mask_value)$")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Config):
    """Optimiser settings.

    Attributes:
        learning_rate: peak learning rate, reached after the warm-up.
        warmup_steps: steps of linear warm-up from 0.
        final_fraction: the cosine decay ends at ``final_fraction * learning_rate``.
        weight_decay: decoupled weight decay on weight matrices and embeddings (not on
            biases, layer norms or the mask vector).
        beta1, beta2, eps: Adam's moment decay rates and denominator constant.
        clip_norm: gradients are rescaled so that their global L2 norm is at most this.
        accumulate_steps: micro-batches whose mean gradient makes one update.
        compute_dtype: ``"float32"`` or ``"bfloat16"`` for the forward/backward pass.
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_fraction: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    clip_norm: float = 1.0
    accumulate_steps: int = 1
    compute_dtype: str = "float32"

    def validate(self) -> None:
        require_positive(
            learning_rate=self.learning_rate,
            clip_norm=self.clip_norm,
            accumulate_steps=self.accumulate_steps,
            eps=self.eps,
        )
        require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(
            0.0 <= self.final_fraction <= 1.0,
            f"final_fraction must be in [0, 1], got {self.final_fraction}",
        )
        require_probability(beta1=self.beta1, beta2=self.beta2)
        require_choice("compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``learning_rate`` over ``warmup_steps`` (capped below
    `total_steps`), then cosine decay to ``final_fraction * learning_rate`` at `total_steps`."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.final_fraction,
    )


def _labels(params: Any, rule) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: rule(jax.tree_util.keystr(path)), params
    )


def build_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip, then AdamW with the schedule, on every trainable leaf of the parameters (the
    array part of a model); fitted statistics (the gene tokenizer's medians) are left
    unchanged."""
    adamw = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            learning_rate_schedule(config, total_steps),
            b1=config.beta1,
            b2=config.beta2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=lambda p: _labels(p, lambda path: not NO_DECAY.search(path)),
        ),
    )
    # labels and masks are functions of the tree: a model is itself callable, so optax
    # would mistake a label tree shaped like it for a labelling function
    return optax.multi_transform(
        {"train": adamw, "frozen": optax.set_to_zero()},
        lambda p: _labels(p, lambda path: "frozen" if FROZEN.search(path) else "train"),
    )


def cast_for_compute(params: Any, compute_dtype: str) -> Any:
    """`params` with every trainable floating leaf cast to `compute_dtype` (a no-op for
    float32); fitted statistics keep their precision."""
    dtype = COMPUTE_DTYPES[compute_dtype]
    if dtype == jnp.float32:
        return params

    def cast(path, x):
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(dtype) if floating and not FROZEN.search(jax.tree_util.keystr(path)) else x

    return jax.tree_util.tree_map_with_path(cast, params)
