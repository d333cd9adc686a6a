"""A pretraining task: the freshly initialised model (or the ``--init`` checkpoint,
`pretraining.initial_model`), its objective, where its batches come
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
from pretraining.initial_model import InitError, InitialModel, load_initial
from pretraining.objectives import (
    gene_id_targets,
    masked_expression_sums,
    masked_gene_id_sums,
    masked_token_sums,
)
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
        model: the initial model (with fitted statistics, e.g. gene medians), or the
            ``init`` checkpoint as loaded.
        objective: ``(model, batch, keys) -> {"loss_sum", "count", ...}``: masked tokens
            for DNA, masked expression for an expression model, masked gene ids for one
            with the ``"gene_logits"`` head (Geneformer-style).
        make_batch: ``(step, rows, part) -> batch`` of NumPy arrays for the given global
            example rows (``part`` 0 training, 1 validation).
        unit: what throughput counts (``"tokens"`` or ``"cells"``).
        units_per_example: tokens per window, or 1 cell.
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
    """Read the corpus of `run` and build its model (a fresh preset model, or the ``init``
    checkpoint with its own tokenizer and genes) and batches.

    Raises:
        InitError: for an ``init`` model of the other task, windows longer than its
            max_len, or genes that do not match.
    """
    initial = load_initial(run.init, run.init_digest) if run.init else None
    key = jax.random.key(run.seed)
    if run.task == "dna":
        corpus = DnaCorpus(run.data, val_fraction=run.val_fraction)
        if initial is None:
            preset = PRESETS[run.preset]
            config = TransformerSequenceEncoderConfig(
                transformer=dataclasses.replace(preset.transformer, dropout=run.dropout),
                max_len=run.seq_len or preset.seq_len,
            )
            model = TransformerSequenceEncoder(config, key=key)
        else:
            model = _initial_of(initial, TransformerSequenceEncoder, run)
        config = model.config
        seq_len = run.seq_len or config.max_len
        if seq_len > config.max_len:
            raise InitError(
                f"--seq-len {seq_len} is longer than the --init model's max_len {config.max_len}"
            )
        tokenizer = config.tokenizer
        windows = MaskedWindows(corpus, tokenizer, seq_len, seed=run.seed)
        return Task(
            model=model,
            objective=masked_token_sums,
            make_batch=windows.batch,
            unit="tokens",
            units_per_example=seq_len,
            flops_per_example=encoder_train_flops(
                config.transformer, seq_len, tokenizer.vocab_size, windows.n_targets
            ),
            corpus=corpus,
            sources=corpus.sources,
        )
    if initial is None:
        corpus = ExpressionCorpus(
            run.data, val_fraction=run.val_fraction, vocabulary=given_vocabulary(run.genes)
        )
        preset = PRESETS[run.preset]
        config = DifferentiableFoundationModelConfig(
            tokenizer=GeneTokenizerConfig(
                n_genes=corpus.n_genes,
                max_tokens=min(run.max_tokens or preset.max_tokens, corpus.n_genes),
            ),
            transformer=dataclasses.replace(preset.transformer, dropout=run.dropout),
        )
        model = DifferentiableFoundationModel(config, key=key)
        model = model.with_tokenizer(corpus.fit_tokenizer(model.tokenizer))
    else:
        model = _initial_of(initial, DifferentiableFoundationModel, run)
        vocabulary = _initial_genes(initial, run)
        corpus = ExpressionCorpus(run.data, val_fraction=run.val_fraction, vocabulary=vocabulary)
    config = model.config
    if config.head == "gene_logits":  # Geneformer-style: masked gene ids
        objective = masked_gene_id_sums
        flops = encoder_train_flops(
            config.transformer,
            config.tokenizer.sequence_length,
            config.tokenizer.vocab_size,
            gene_id_targets(model),
        )
    else:
        objective = masked_expression_sums
        flops = foundation_train_flops(config.transformer, config.tokenizer.max_tokens + 1)
    return Task(
        model=model,
        objective=objective,
        make_batch=CellBatches(corpus, seed=run.seed).batch,
        unit="cells",
        units_per_example=1,
        flops_per_example=flops,
        corpus=corpus,
        sources=corpus.sources,
        genes=corpus.vocabulary,
    )


def _initial_of(initial: InitialModel, kind: type, run: RunConfig) -> eqx.Module:
    """The ``init`` model, refused unless it is a `kind` (the model `run.task` trains)."""
    if not isinstance(initial.model, kind):
        raise InitError(
            f"--init {run.init} is a {type(initial.model).__name__}; `pretrain {run.task}` "
            f"continues a {kind.__name__}"
        )
    return initial.model


def _initial_genes(initial: InitialModel, run: RunConfig) -> GeneVocabulary:
    """The genes of an ``init`` expression model, in its column order: its ``genes.tsv``,
    or ``--genes`` where the checkpoint carries none (an imported scGPT folder)."""
    given = given_vocabulary(run.genes)
    if initial.genes is not None and given is not None:
        raise InitError(
            f"--init {run.init} carries its own genes ({GENES_FILE}); drop --genes {run.genes}"
        )
    genes = initial.genes or given
    if genes is None:
        raise InitError(
            f"--init {run.init} carries no {GENES_FILE}; pass --genes with its genes in the "
            "model's column order"
        )
    n_genes = initial.model.config.tokenizer.n_genes
    if len(genes) != n_genes:
        raise InitError(
            f"--init {run.init} reads {n_genes:,} genes, but its gene vocabulary lists "
            f"{len(genes):,}"
        )
    return genes


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
