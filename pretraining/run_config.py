"""`RunConfig`: everything that decides what a pretraining run computes, saved in every
training checkpoint and in the exported model card. The device mesh is not part of it: a
run may resume on a different mesh.

A resumed run must keep every setting that shapes the training trajectory; that includes
``steps``, because it fixes the length of the learning-rate schedule (warm-up, then cosine
decay that ends at step ``steps``). Only the bookkeeping in `RESUMABLE_CHANGES` may change.
"""

from __future__ import annotations

import dataclasses

from pretraining.optimizer import OptimizerConfig
from pretraining.presets import PRESETS
from zoo.common.config import Config, require, require_choice, require_positive, require_probability

TASKS = ("dna", "expression")
# Fields that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = ("eval_every", "eval_batches", "save_every", "keep")
DEFAULT_DROPOUT = 0.1


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """A pretraining run.

    Attributes:
        task: ``"dna"`` (masked language modelling of `TransformerSequenceEncoder`) or
            ``"expression"`` (masked expression of `DifferentiableFoundationModel`).
        data: corpus files or dataset names.
        preset: model size, a key of `pretraining.presets.PRESETS`; "" with `init`.
        init: continue pretraining this checkpoint (`pretraining.initial_model`; "": a
            freshly initialised preset model). Its architecture, tokenizer, dropout and
            gene vocabulary are kept.
        init_digest: what `init` resolved to when the run started (Hub commit SHA or
            ``sha256:`` of the files; `pretraining.initial_model.init_digest`); the weights
            loaded must still match it ("": not checked).
        seq_len: DNA tokens per example (0: the preset's, or the `init` model's max_len).
        max_tokens: most gene tokens per cell (0: the preset's, capped at the gene count;
            must be 0 with `init`, whose tokenizer fixes it).
        genes: the expression vocabulary to align the corpus to: a ``genes.tsv`` or a
            model folder holding one ("": the union of the corpus files' genes).
        dropout: dropout probability of a preset's transformer (with `init`, the
            checkpoint's own dropout is kept and this must stay at its default, 0.1).
        steps: optimiser updates in the whole run; also the length of the learning-rate
            schedule, so a resumed run cannot change it.
        batch_size: examples per update (all processes and micro-batches together).
        seed: seeds the initial weights (without `init`), the data order, masks and
            dropout.
        val_fraction: share of the corpus held out (the end of each DNA record; random
            cells).
        eval_every: validate every this many steps (0: only at the end).
        eval_batches: validation batches of ``batch_size`` examples.
        save_every: training checkpoint every this many steps (0: only at the end).
        keep: training checkpoints kept.
        optimizer: AdamW, schedule, clipping, accumulation and compute dtype.
    """

    task: str = "dna"
    data: tuple[str, ...] = ()
    preset: str = "tiny"
    init: str = ""
    init_digest: str = ""
    seq_len: int = 0
    max_tokens: int = 0
    genes: str = ""
    dropout: float = DEFAULT_DROPOUT
    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    val_fraction: float = 0.05
    eval_every: int = 200
    eval_batches: int = 4
    save_every: int = 200
    keep: int = 3
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

    def validate(self) -> None:
        require_choice("task", self.task, TASKS)
        if self.init:
            require(
                not self.preset,
                f"preset: --init {self.init} fixes the architecture; give no preset "
                f"(got {self.preset!r})",
            )
            require(
                self.max_tokens == 0,
                f"max_tokens: --init {self.init} fixes the tokens per cell (its tokenizer's "
                "max_tokens)",
            )
            require(
                self.dropout == DEFAULT_DROPOUT,
                f"dropout: --init {self.init} keeps the checkpoint's own dropout",
            )
        else:
            require(not self.init_digest, "init_digest: only a run with init has one")
            require_choice("preset", self.preset, tuple(PRESETS))
        require(len(self.data) > 0, "data: give at least one corpus file or dataset name")
        require_positive(
            steps=self.steps,
            batch_size=self.batch_size,
            eval_batches=self.eval_batches,
            keep=self.keep,
        )
        require(
            min(self.seq_len, self.max_tokens, self.eval_every, self.save_every) >= 0,
            "seq_len, max_tokens, eval_every and save_every must be >= 0",
        )
        require(
            not self.genes or self.task == "expression", "genes: only an expression run has genes"
        )
        require_probability(dropout=self.dropout)
        require(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1): {self.val_fraction}")
        require(
            self.batch_size % self.optimizer.accumulate_steps == 0,
            f"batch_size ({self.batch_size}) must be a multiple of accumulate_steps "
            f"({self.optimizer.accumulate_steps})",
        )

    def changes_from(self, saved: RunConfig) -> list[str]:
        """Every setting that differs from `saved` and would change the training trajectory
        (all but `RESUMABLE_CHANGES`), as ``"name: saved X, now Y"``; optimiser settings are
        named ``optimizer.<field>``."""
        mine, theirs = _flat(self.to_dict()), _flat(saved.to_dict())
        return [
            f"{name}: saved {theirs[name]!r}, now {value!r}"
            for name, value in mine.items()
            if name not in RESUMABLE_CHANGES and value != theirs.get(name)
        ]


def _flat(values: dict, prefix: str = "") -> dict:
    """`values` with nested dicts spread into ``"outer.inner"`` keys."""
    out = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out
