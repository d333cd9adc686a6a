"""A pretraining task: the freshly initialised model, its objective, where its batches come
from, how much work one example is and, for expression, the gene vocabulary exported with
the model. `build_task` reads the corpus, so every input error (a missing file, a non-DNA
FASTA, an .h5ad without counts, repeated gene names) is raised before any compilation or
compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from pretraining.dna_data import DnaCorpus, MaskedWindows
from pretraining.expression_data import CellBatches, ExpressionCorpus, ExpressionDataError
from pretraining.objectives import masked_expression_sums, masked_token_sums
from pretraining.presets import PRESETS
from pretraining.provenance import Source
from pretraining.run_config import RunConfig
from pretraining.throughput import encoder_train_flops, foundation_train_flops
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizerConfig
from zoo.expression.gene_vocabulary import GENES_FILE, GeneMatchError, GeneVocabulary
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig


@dataclasses.dataclass
class Task:
    """What the train loop needs to know about one kind of pretraining.

    Attributes:
        model: the initial model (with fitted statistics, e.g. gene medians).
        objective: ``(model, batch, keys) -> {"loss_sum", "count", ...}``.
        make_batch: ``(step, rows, part) -> batch`` of NumPy arrays for the given global
            example rows (``part`` 0 training, 1 validation).
        unit: what throughput counts (``"tokens"`` or ``"cells"``).
        units_per_example: tokens per sequence, or 1 cell.
        flops_per_example: training FLOPs of one example (`pretraining.throughput`).
        corpus: the `DnaCorpus` or `ExpressionCorpus` read.
        sources: provenance of the corpus.
        genes: the input genes of an expression model, in column order (the corpus's
            vocabulary), exported with it as ``genes.tsv``; None for DNA.
    """

    model: eqx.Module
    objective: Callable[..., dict[str, Any]]
    make_batch: Callable[[int, Sequence[int], int], Any]
    unit: str
    units_per_example: int
    flops_per_example: float
    corpus: DnaCorpus | ExpressionCorpus
    sources: list[Source]
    genes: GeneVocabulary | None = None


def build_task(run: RunConfig) -> Task:
    """Read the corpus of `run` and build its model and batches."""
    preset = PRESETS[run.preset]
    transformer = dataclasses.replace(preset.transformer, dropout=run.dropout)
    key = jax.random.key(run.seed)
    if run.task == "dna":
        corpus = DnaCorpus(run.data, val_fraction=run.val_fraction)
        config = TransformerSequenceEncoderConfig(
            transformer=transformer, max_len=run.seq_len or preset.seq_len
        )
        windows = MaskedWindows(corpus, config.tokenizer, config.max_len, seed=run.seed)
        return Task(
            model=TransformerSequenceEncoder(config, key=key),
            objective=masked_token_sums,
            make_batch=windows.batch,
            unit="tokens",
            units_per_example=config.max_len,
            flops_per_example=encoder_train_flops(
                transformer, config.max_len, config.tokenizer.vocab_size, windows.n_targets
            ),
            corpus=corpus,
            sources=corpus.sources,
        )
    corpus = ExpressionCorpus(
        run.data, val_fraction=run.val_fraction, vocabulary=given_vocabulary(run.genes)
    )
    max_tokens = min(run.max_tokens or preset.max_tokens, corpus.n_genes)
    config = DifferentiableFoundationModelConfig(
        tokenizer=GeneTokenizerConfig(n_genes=corpus.n_genes, max_tokens=max_tokens),
        transformer=transformer,
    )
    model = DifferentiableFoundationModel(config, key=key)
    model = model.with_tokenizer(corpus.fit_tokenizer(model.tokenizer))
    return Task(
        model=model,
        objective=masked_expression_sums,
        make_batch=CellBatches(corpus, seed=run.seed).batch,
        unit="cells",
        units_per_example=1,
        flops_per_example=foundation_train_flops(transformer, max_tokens + 1),
        corpus=corpus,
        sources=corpus.sources,
        genes=corpus.vocabulary,
    )


def given_vocabulary(genes: str) -> GeneVocabulary | None:
    """The vocabulary in `genes`: a ``genes.tsv``, or a model folder holding one; None for
    "" (the corpus's own union).

    Raises:
        ExpressionDataError: naming the path, when it holds no readable ``genes.tsv``.
    """
    if not genes:
        return None
    path = Path(genes) / GENES_FILE if Path(genes).is_dir() else Path(genes)
    if not path.is_file():
        raise ExpressionDataError(f"--genes {genes}: no {path.name} there")
    try:
        return GeneVocabulary.read(path)
    except GeneMatchError as error:
        raise ExpressionDataError(f"--genes {genes}: {error}") from None
