"""Fresh backbones for a task when no checkpoint is given (the from-scratch baselines)."""

from __future__ import annotations

import equinox as eqx
import jax

from finetuning.tasks import Task
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig


def default_backbone(task: Task, *, seed: int = 0) -> eqx.Module:
    """A default-config encoder for DNA tasks, or a default-config foundation model whose
    tokenizer is fitted on the task's training cells for cell tasks."""
    key = jax.random.key(seed)
    if task.modality == "dna":
        return TransformerSequenceEncoder(TransformerSequenceEncoderConfig(), key=key)
    n_genes = task.train.inputs.shape[1]
    tokenizer = GeneTokenizerConfig(n_genes=n_genes, max_tokens=min(256, n_genes))
    model = DifferentiableFoundationModel(
        DifferentiableFoundationModelConfig(tokenizer=tokenizer), key=key
    )
    return model.with_tokenizer(model.tokenizer.fit(task.train.inputs))


def same_architecture_from_scratch(backbone: eqx.Module, *, seed: int = 1) -> eqx.Module:
    """A freshly initialised model with `backbone`'s architecture and config (and, for the
    foundation model, its fitted gene statistics): the from-scratch baseline of a fine-tune."""
    fresh = type(backbone)(backbone.config, key=jax.random.key(seed))
    if isinstance(backbone, DifferentiableFoundationModel):
        fresh = fresh.with_tokenizer(backbone.tokenizer)
    return fresh
