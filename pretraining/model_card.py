"""What the model card of an exported pretrained model says, and its loss-curve plot.

The card itself is rendered by `checkpoints.card` like every other checkpoint's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checkpoints.card import CardDetails, DataSource, TrainingRecord
from pretraining.provenance import Source
from pretraining.run_config import RunConfig

LOSS_CURVE = "loss_curve.png"
FINAL_TRAINING_LOSS = "final training loss (mean of last 20 steps)"
TASK_TAGS = {"dna": ("dna", "masked-language-modeling"), "expression": ("single-cell",)}
OBJECTIVES = {
    "dna": "masked language modelling (15 % of tokens; 80 % [MASK], 10 % random, 10 % kept); "
    "loss = cross-entropy in nats per masked nucleotide token (uniform baseline log 4 = 1.386)",
    "expression": "masked expression prediction (15 % of each cell's gene tokens); "
    "loss = mean squared error of log1p(normalised expression) at masked genes",
}


def card_details(
    architecture: str, run: RunConfig, sources: list[Source], summary: dict[str, Any]
) -> CardDetails:
    """What the model card of an exported pretraining run says: the data provenance, the
    objective, the run's settings and its results (`summary`: steps, units seen, final
    training loss, hardware, then any further figures, in order)."""
    unit = "tokens" if run.task == "dna" else "cells"
    held_out = "the end of every record" if run.task == "dna" else "cells drawn at random"
    figures = [
        (name, value)
        for name, value in summary.items()
        if name not in ("steps", f"{unit} seen", FINAL_TRAINING_LOSS, "hardware")
    ]
    return CardDetails(
        summary=f"A `{architecture}` pretrained with biozoo's `pretrain {run.task}` command.",
        tags=tuple(TASK_TAGS[run.task]),
        training_data=tuple(
            DataSource(name=s.name, contents=s.summary, licence=s.licence, sha256=s.sha256)
            for s in sources
        ),
        training=TrainingRecord(
            steps=summary["steps"],
            examples_seen=summary[f"{unit} seen"],
            examples_unit=unit,
            final_loss=summary[FINAL_TRAINING_LOSS],
            hardware=summary["hardware"],
            objective=OBJECTIVES[run.task],
            figures=(("held out for validation", f"{run.val_fraction:.0%} ({held_out})"), *figures),
            loss_curve=LOSS_CURVE,
            settings=run.to_dict(),
        ),
    )


def plot_loss_curve(
    path: Path,
    train: list[tuple[int, float]],
    validation: list[tuple[int, float]],
    baseline: float | None,
    ylabel: str,
) -> None:
    """Training loss per step (faint, and a running mean), validation loss as points, and
    the uniform baseline as a dashed line, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8)
        window = max(1, len(losses) // 50)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, color="tab:blue", label="training")
    if validation:
        steps, losses = zip(*validation, strict=True)
        ax.plot(steps, losses, "o-", color="tab:orange", label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="uniform baseline")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
