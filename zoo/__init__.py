"""An Equinox model zoo for differentiable biology.

Every model is an immutable `equinox.Module` built as ``Model(Config(...), key=key)`` whose
``__call__`` handles one example; batch with `jax.vmap`. `save_pretrained` and
`from_pretrained` (which live in the `checkpoints` package and are imported on first use,
so that ``import zoo`` stays light) write and read the weight format.
"""

from zoo.config import Config, ConfigError
from zoo.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
    FoundationOutput,
    masked_expression_loss,
)
from zoo.gene_tokenizer import GeneTokenizer, GeneTokenizerConfig, GeneTokens
from zoo.nucleotides import NucleotideTokenizer, SequenceError, one_hot
from zoo.registry import ARCHITECTURES, UnknownArchitectureError
from zoo.sequence_embedding import SequenceEmbedding, SequenceEmbeddingConfig, SequenceOutput
from zoo.sequence_encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.soft_rank import hard_rank, soft_rank
from zoo.transformer import TransformerConfig

_FROM_CHECKPOINTS = ("save_pretrained", "from_pretrained")


def __getattr__(name: str):
    if name in _FROM_CHECKPOINTS:
        import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "Config",
    "ConfigError",
    "DifferentiableFoundationModel",
    "DifferentiableFoundationModelConfig",
    "FoundationOutput",
    "GeneTokenizer",
    "GeneTokenizerConfig",
    "GeneTokens",
    "NucleotideTokenizer",
    "SequenceEmbedding",
    "SequenceEmbeddingConfig",
    "SequenceError",
    "SequenceOutput",
    "TransformerConfig",
    "TransformerSequenceEncoder",
    "TransformerSequenceEncoderConfig",
    "UnknownArchitectureError",
    "hard_rank",
    "masked_expression_loss",
    "one_hot",
    "soft_rank",
    *_FROM_CHECKPOINTS,
]
