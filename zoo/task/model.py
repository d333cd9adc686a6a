"""`TaskModel`: a backbone from the zoo with a linear head for a downstream task.

The backbone is any of the sequence or cell representation models; its pooled embedding
(``pooled`` for sequences, ``cell_embedding`` for cells) goes through dropout and a linear
layer to ``n_outputs`` logits (classification) or values (regression, rescaled to the
target's units by ``target_mean`` and ``target_scale``). The whole thing is
one registered architecture, so a fine-tuned model saves and loads like any other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from zoo.common.config import (
    Config,
    ConfigError,
    require,
    require_choice,
    require_positive,
    require_probability,
)
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.sequence.cnn import SequenceEmbedding, SequenceEmbeddingConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig

# The architectures a task head can sit on, with their config classes. Kept here rather than
# looked up in `zoo.registry`, which imports this module: the registry sits above every model.
BACKBONES: dict[str, tuple[type[eqx.Module], type[Config]]] = {
    "SequenceEmbedding": (SequenceEmbedding, SequenceEmbeddingConfig),
    "TransformerSequenceEncoder": (TransformerSequenceEncoder, TransformerSequenceEncoderConfig),
    "DifferentiableFoundationModel": (
        DifferentiableFoundationModel,
        DifferentiableFoundationModelConfig,
    ),
}


@dataclasses.dataclass(frozen=True)
class TaskModelConfig(Config):
    """Architecture of a `TaskModel`.

    Attributes:
        backbone_architecture: registry name of the backbone (one of `BACKBONES`).
        backbone: the backbone's config.
        task: ``"classification"`` (softmax cross-entropy over ``n_outputs`` classes) or
            ``"regression"`` (``n_outputs`` real targets, squared error).
        n_outputs: classes or regression targets.
        labels: class names, in output order (classification only; may be empty).
        head_dropout: dropout on the pooled embedding while training.
        target_mean, target_scale: regression only: the head predicts the standardised
            target ``(y - target_mean) / target_scale`` and the model returns
            ``target_mean + target_scale * head``, so the head starts near the scale of
            the data whatever its units (use the training targets' mean and standard
            deviation).
    """

    backbone_architecture: str = "TransformerSequenceEncoder"
    backbone: Any = None
    task: str = "classification"
    n_outputs: int = 2
    labels: tuple[str, ...] = ()
    head_dropout: float = 0.1
    target_mean: float = 0.0
    target_scale: float = 1.0

    def __post_init__(self) -> None:
        require_choice("backbone_architecture", self.backbone_architecture, tuple(BACKBONES))
        if self.backbone is None:
            object.__setattr__(self, "backbone", self.backbone_config_class()())
        super().__post_init__()

    def backbone_config_class(self) -> type[Config]:
        """The config class of the backbone architecture."""
        return BACKBONES[self.backbone_architecture][1]

    def validate(self) -> None:
        require(
            isinstance(self.backbone, self.backbone_config_class()),
            f"backbone must be a {self.backbone_config_class().__name__}",
        )
        require_choice("task", self.task, ("classification", "regression"))
        require_positive(n_outputs=self.n_outputs)
        require(
            not self.labels or len(self.labels) == self.n_outputs,
            f"labels has {len(self.labels)} names for {self.n_outputs} outputs",
        )
        require(self.task == "classification" or not self.labels, "labels are for classification")
        require_probability(head_dropout=self.head_dropout)
        require_positive(target_scale=self.target_scale)
        require(
            self.task == "regression" or (self.target_mean, self.target_scale) == (0.0, 1.0),
            "target_mean and target_scale are for regression",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskModelConfig:
        """As `Config.from_dict`, with the backbone config typed by its architecture."""
        data = dict(data)
        architecture = data.get("backbone_architecture", cls.backbone_architecture)
        if architecture not in BACKBONES:
            raise ConfigError(
                f"backbone_architecture must be one of {tuple(BACKBONES)}, got {architecture!r}"
            )
        if isinstance(data.get("backbone"), dict):
            data["backbone"] = BACKBONES[architecture][1].from_dict(data["backbone"])
        return super().from_dict(data)


class TaskModel(eqx.Module):
    """A zoo backbone with a linear task head (see the module docstring)."""

    backbone: eqx.Module
    dropout: eqx.nn.Dropout
    head: eqx.nn.Linear
    config: TaskModelConfig = eqx.field(static=True)

    def __init__(self, config: TaskModelConfig, *, key: PRNGKeyArray):
        backbone_key, head_key = jax.random.split(key)
        backbone_class = BACKBONES[config.backbone_architecture][0]
        self.backbone = backbone_class(config.backbone, key=backbone_key)
        width = embedding_width(config.backbone)
        self.dropout = eqx.nn.Dropout(config.head_dropout)
        self.head = eqx.nn.Linear(width, config.n_outputs, key=head_key)
        self.config = config

    def with_backbone(self, backbone: eqx.Module) -> TaskModel:
        """A copy with `backbone` (for example a pretrained one) in place of the current one."""
        if backbone.config != self.config.backbone:
            raise ValueError("the backbone's config differs from this task model's backbone config")
        return eqx.tree_at(lambda m: m.backbone, self, backbone)

    def embed(self, *inputs: Array, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        """The backbone's pooled embedding of one example (`backbone_embedding`)."""
        return backbone_embedding(self.backbone, *inputs, key=key)

    def __call__(
        self, *inputs: Array, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n_outputs"]:
        """Logits (classification) or predictions (regression) for one example.

        Args:
            inputs: what the backbone reads: ``(ids, mask)`` or ``(one_hot, mask)`` for
                sequences, ``(counts,)`` for cells.
            key: drives dropout; needed only while training with dropout.
        """
        backbone_key, head_key = (None, None) if key is None else jax.random.split(key)
        pooled = self.embed(*inputs, key=backbone_key)
        outputs = self.head(self.dropout(pooled, key=head_key))
        if self.config.task == "regression":
            return self.config.target_mean + self.config.target_scale * outputs
        return outputs


def backbone_embedding(
    backbone: eqx.Module, *inputs: Array, key: PRNGKeyArray | None = None
) -> Float[Array, " dim"]:
    """The pooled embedding of one example: ``pooled`` for sequence models, the
    ``cell_embedding`` of the foundation model with no expression masked.

    Args:
        backbone: one of the `BACKBONES` architectures.
        inputs: what it reads: ``(ids, mask)`` or ``(one_hot, mask)`` for sequences,
            ``(counts,)`` for cells.
        key: drives dropout; needed only while training with dropout.
    """
    if isinstance(backbone, DifferentiableFoundationModel):
        (counts,) = inputs
        no_mask = jnp.zeros(backbone.config.tokenizer.max_tokens, bool)
        return backbone(counts, key=key, expression_mask=no_mask).cell_embedding
    return backbone(*inputs, key=key).pooled


def embedding_width(config: Config) -> int:
    """Width of the pooled embedding a backbone config produces."""
    if hasattr(config, "transformer"):
        return config.transformer.dim
    return config.embedding_dim
