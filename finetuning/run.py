"""One fine-tuning run from a checkpoint reference (or from scratch) to a saved, carded
checkpoint: the logic behind ``biozoo finetune``."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from checkpoints.card import CardDetails, DataSource, EvaluationResult, TrainingRecord
from finetuning.metrics import plot_confusion_matrix
from finetuning.regression_metrics import plot_scatter
from finetuning.tasks import Task
from finetuning.train import FineTuneConfig, FineTuneResult, fine_tune
from pretraining.state import TrainingCheckpoints
from zoo.expression.gene_vocabulary import GeneVocabulary
from zoo.registry import architecture_of
from zoo.task.model import BACKBONES, TaskModel, TaskModelConfig


def task_model(task: Task, backbone, *, head_dropout: float = 0.1, seed: int = 0) -> TaskModel:
    """A classifier (or, for a regression task, a one-output regressor whose target is
    standardised by the training targets' mean and standard deviation) for `task` on top of
    `backbone` (its weights are kept)."""
    architecture = architecture_of(backbone)
    if architecture not in BACKBONES:
        raise ValueError(f"{architecture} cannot be a task backbone; use one of {tuple(BACKBONES)}")
    modality = "cells" if architecture == "DifferentiableFoundationModel" else "dna"
    if modality != task.modality:
        raise ValueError(f"task {task.name} needs a {task.modality} model, got a {architecture}")
    scaling = {}
    if task.target == "regression":
        targets = np.asarray(task.train.labels, np.float64)
        scale = float(targets.std())
        scaling = {"target_mean": float(targets.mean()), "target_scale": scale if scale else 1.0}
    config = TaskModelConfig(
        backbone_architecture=architecture,
        backbone=backbone.config,
        task=task.target,
        n_outputs=task.n_outputs,
        labels=task.classes,
        head_dropout=head_dropout,
        **scaling,
    )
    return TaskModel(config, key=jax.random.key(seed)).with_backbone(backbone)


def save_result(
    result: FineTuneResult,
    task: Task,
    config: FineTuneConfig,
    out: Path,
    *,
    base_model: str | None,
    genes: GeneVocabulary | None = None,
) -> Path:
    """Save the fine-tuned model with a card (base model, metrics), its gene vocabulary
    (`genes`, for an expression backbone) and its test confusion matrix
    (``confusion_matrix.png``) or, for regression, its test scatter plot (``scatter.png``)."""
    from checkpoints import save_pretrained

    evaluation = tuple(
        EvaluationResult(
            task="text-classification" if task.target == "classification" else "tabular-regression",
            dataset=f"{task.name} (test)",
            metric=name,
            value=round(value, 4),
        )
        for name, value in result.test.items()
        if np.isfinite(value)  # an undefined correlation or AUROC is left off the card
    )
    backbone = architecture_of(result.model.backbone)
    what = ", ".join(task.classes) if task.target == "classification" else "regression"
    details = CardDetails(
        summary=f"`{backbone}` fine-tuned on {task.name} ({what}), {config.strategy} strategy.",
        base_model=base_model,
        training_data=(DataSource(name=task.name, url=task.provenance),),
        training=TrainingRecord(
            steps=result.steps,
            examples_seen=result.steps * config.batch_size,
            examples_unit="sequences" if task.modality == "dna" else "cells",
            final_loss=result.history[-1]["train_loss"] if result.history else None,
            hardware=", ".join(sorted({d.device_kind for d in jax.devices()})),
        ),
        evaluation=evaluation,
        limitations="Fine-tuned on one small public data set; check it on yours before use.",
    )
    folder = save_pretrained(result.model, out, card=details, genes=genes)
    title = f"{task.name} (test)"
    if result.confusion is not None:
        plot_confusion_matrix(
            result.confusion, list(task.classes), folder / "confusion_matrix.png", title
        )
    else:
        plot_scatter(task.test.labels, result.test_outputs, folder / "scatter.png", title)
    history = {"fine_tune_config": config.to_dict(), "history": result.history, "test": result.test}
    (folder / "fine_tune_history.json").write_text(json.dumps(history, indent=2) + "\n")
    return folder


def run_fine_tune(
    task: Task,
    backbone,
    config: FineTuneConfig,
    out: Path,
    *,
    base_model: str | None,
    progress: bool = True,
    mesh: Mesh | None = None,
    checkpoints: TrainingCheckpoints | None = None,
    resume: bool = False,
    genes: GeneVocabulary | None = None,
) -> tuple[FineTuneResult, Path]:
    """Fine-tune `backbone` on `task` (on `mesh`, saving training state to `checkpoints`,
    resuming from it with `resume`: see `finetuning.train.fine_tune`), save the result to
    `out` (with `genes`, an expression backbone's gene vocabulary), return both."""
    result = fine_tune(
        task_model(task, backbone, seed=config.seed),
        task,
        config,
        mesh=mesh,
        checkpoints=checkpoints,
        resume=resume,
        progress=progress,
    )
    return result, save_result(result, task, config, out, base_model=base_model, genes=genes)
