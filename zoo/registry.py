"""The registry of architectures: the only place a checkpoint's ``architecture`` name is
turned into code. Nothing is ever imported by a name read from a file."""

from __future__ import annotations

import equinox as eqx

from zoo.common.config import Config
from zoo.deseq2.model import DifferentiableNBGLM, DifferentiableNBGLMConfig
from zoo.em.model import DifferentiableEMQuantifier, DifferentiableEMQuantifierConfig
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizer, GeneTokenizerConfig
from zoo.hmm.model import DifferentiableHMM, DifferentiableHMMConfig
from zoo.phate.model import DifferentiablePHATE, DifferentiablePHATEConfig
from zoo.sequence.cnn import SequenceEmbedding, SequenceEmbeddingConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.task.model import TaskModel, TaskModelConfig
from zoo.umap.model import DifferentiableUMAP, DifferentiableUMAPConfig
from zoo.vae.model import VAENormalizer, VAENormalizerConfig

ARCHITECTURES: dict[str, tuple[type[eqx.Module], type[Config]]] = {
    "DifferentiableEMQuantifier": (DifferentiableEMQuantifier, DifferentiableEMQuantifierConfig),
    "SequenceEmbedding": (SequenceEmbedding, SequenceEmbeddingConfig),
    "TransformerSequenceEncoder": (TransformerSequenceEncoder, TransformerSequenceEncoderConfig),
    "TaskModel": (TaskModel, TaskModelConfig),
    "DifferentiableUMAP": (DifferentiableUMAP, DifferentiableUMAPConfig),
    "VAENormalizer": (VAENormalizer, VAENormalizerConfig),
    "GeneTokenizer": (GeneTokenizer, GeneTokenizerConfig),
    "DifferentiableHMM": (DifferentiableHMM, DifferentiableHMMConfig),
    "DifferentiableNBGLM": (DifferentiableNBGLM, DifferentiableNBGLMConfig),
    "DifferentiablePHATE": (DifferentiablePHATE, DifferentiablePHATEConfig),
    "DifferentiableFoundationModel": (
        DifferentiableFoundationModel,
        DifferentiableFoundationModelConfig,
    ),
}


class UnknownArchitectureError(KeyError):
    """A checkpoint names an architecture that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


def lookup(name: str) -> tuple[type[eqx.Module], type[Config]]:
    """The model class and config class registered as `name`."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; this version knows {sorted(ARCHITECTURES)}"
        ) from None


def architecture_of(model: eqx.Module) -> str:
    """The registered name of `model`'s class."""
    for name, (cls, _) in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise UnknownArchitectureError(f"{type(model).__name__} is not a registered architecture")
