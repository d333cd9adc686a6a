"""The registry of architectures: the only place a checkpoint's ``architecture`` name is
turned into code. Nothing is ever imported by a name read from a file."""

from __future__ import annotations

import equinox as eqx

from zoo.config import Config
from zoo.em_quantifier import DifferentiableEMQuantifier, DifferentiableEMQuantifierConfig
from zoo.foundation_model import DifferentiableFoundationModel, DifferentiableFoundationModelConfig
from zoo.gene_tokenizer import GeneTokenizer, GeneTokenizerConfig
from zoo.hmm import DifferentiableHMM, DifferentiableHMMConfig
from zoo.nbglm import DifferentiableNBGLM, DifferentiableNBGLMConfig
from zoo.phate import DifferentiablePHATE, DifferentiablePHATEConfig
from zoo.sequence_embedding import SequenceEmbedding, SequenceEmbeddingConfig
from zoo.sequence_encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.task_model import TaskModel, TaskModelConfig
from zoo.umap import DifferentiableUMAP, DifferentiableUMAPConfig
from zoo.vae import VAENormalizer, VAENormalizerConfig

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
