"""An Equinox model zoo for differentiable biology.

Every model is an immutable `equinox.Module` built as ``Model(Config(...), key=key)`` whose
``__call__`` handles one example; batch with `jax.vmap`. `save_pretrained` and
`from_pretrained` (which live in the `checkpoints` package and are imported on first use,
so that ``import zoo`` stays light) write and read the weight format.
"""

from zoo.common.config import Config, ConfigError
from zoo.common.transformer import TransformerConfig
from zoo.deseq2.design import DesignError
from zoo.deseq2.differential_expression import differential_expression
from zoo.deseq2.model import DifferentiableNBGLM, DifferentiableNBGLMConfig, NBGLMFit, fit_nbglm
from zoo.deseq2.outlier_replacement import CooksRefitWarning
from zoo.deseq2.wald import WaldTest
from zoo.em.effective_lengths import FragmentLengths, effective_lengths
from zoo.em.equivalence_classes import EquivalenceClasses
from zoo.em.model import (
    Abundances,
    DifferentiableEMQuantifier,
    DifferentiableEMQuantifierConfig,
)
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
    FoundationOutput,
    masked_expression_loss,
)
from zoo.expression.gene_tokenizer import GeneTokenizer, GeneTokenizerConfig, GeneTokens
from zoo.expression.soft_rank import hard_rank, soft_rank
from zoo.hmm.fit import HMMFit, fit_hmm_baum_welch, fit_hmm_gradient
from zoo.hmm.model import DifferentiableHMM, DifferentiableHMMConfig
from zoo.phate.model import DifferentiablePHATE, DifferentiablePHATEConfig, PHATEGraph
from zoo.registry import ARCHITECTURES, UnknownArchitectureError
from zoo.sequence.cnn import SequenceEmbedding, SequenceEmbeddingConfig, SequenceOutput
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.sequence.nucleotides import NucleotideTokenizer, SequenceError, one_hot
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer
from zoo.task.model import TaskModel, TaskModelConfig
from zoo.umap.model import DifferentiableUMAP, DifferentiableUMAPConfig, UMAPDriftWarning
from zoo.vae.fit import annotate_vae, fit_vae
from zoo.vae.model import VAENormalizer, VAENormalizerConfig
from zoo.vae.training import VAETrainingConfig, train_vae

_FROM_CHECKPOINTS = ("save_pretrained", "from_pretrained", "push_to_hub")


def __getattr__(name: str):
    if name in _FROM_CHECKPOINTS:
        import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "Abundances",
    "Config",
    "ConfigError",
    "CooksRefitWarning",
    "DesignError",
    "DifferentiableEMQuantifier",
    "DifferentiableEMQuantifierConfig",
    "DifferentiableFoundationModel",
    "DifferentiableFoundationModelConfig",
    "DifferentiableHMM",
    "DifferentiableHMMConfig",
    "DifferentiableNBGLM",
    "DifferentiableNBGLMConfig",
    "DifferentiablePHATE",
    "DifferentiablePHATEConfig",
    "DifferentiableUMAP",
    "DifferentiableUMAPConfig",
    "EquivalenceClasses",
    "FoundationOutput",
    "FragmentLengths",
    "GeneTokenizer",
    "GeneTokenizerConfig",
    "GeneTokens",
    "HMMFit",
    "NBGLMFit",
    "NucleotideTokenizer",
    "PHATEGraph",
    "SequenceEmbedding",
    "SequenceEmbeddingConfig",
    "SequenceError",
    "SequenceOutput",
    "TaskModel",
    "TaskModelConfig",
    "TransformerConfig",
    "TransformerSequenceEncoder",
    "TransformerSequenceEncoderConfig",
    "UMAPDriftWarning",
    "UnknownArchitectureError",
    "VAENormalizer",
    "VAENormalizerConfig",
    "VAETrainingConfig",
    "VocabularyTokenizer",
    "WaldTest",
    "annotate_vae",
    "differential_expression",
    "effective_lengths",
    "fit_hmm_baum_welch",
    "fit_hmm_gradient",
    "fit_nbglm",
    "fit_vae",
    "hard_rank",
    "masked_expression_loss",
    "one_hot",
    "soft_rank",
    "train_vae",
    *_FROM_CHECKPOINTS,
]
