"""The model card and loss-curve plot written with an exported pretrained model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pretraining.provenance import Source
from pretraining.run_config import RunConfig

LOSS_CURVE = "loss_curve.png"
TASK_TAGS = {"dna": ["dna", "masked-language-modeling"], "expression": ["single-cell"]}
OBJECTIVES = {
    "dna": "masked language modelling (15 % of tokens; 80 % [MASK], 10 % random, 10 % kept); "
    "loss = cross-entropy in nats per masked nucleotide token (uniform baseline log 4 = 1.386)",
    "expression": "masked expression prediction (15 % of each cell's gene tokens); "
    "loss = mean squared error of log1p(normalised expression) at masked genes",
}


def render_card(
    architecture: str,
    model_config: Any,
    run: RunConfig,
    sources: list[Source],
    summary: dict[str, Any],
) -> str:
    """Markdown with Hub YAML metadata, the data provenance, the run's settings and its
    results (`summary`: steps, units seen, final losses, hardware, ...)."""
    datasets = "".join(f"- {s.name}\n" for s in sources)
    tags = "".join(f"- {t}\n" for t in ["biozoo", architecture, *TASK_TAGS[run.task]])
    data_rows = "".join(
        f"| `{s.name}` | {s.summary} | `{s.sha256[:16]}…` | {s.licence or 'see source'} |\n"
        for s in sources
    )

    def number(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    results = "".join(f"| {name} | {number(value)} |\n" for name, value in summary.items())
    return (
        "---\n"
        "library_name: biozoo\n"
        "license: other\n"
        f"tags:\n{tags}"
        f"datasets:\n{datasets}"
        "metrics:\n- loss\n"
        "---\n\n"
        f"# {architecture} pretrained with biozoo\n\n"
        f"Objective: {OBJECTIVES[run.task]}.\n\n"
        '```python\nimport zoo\nmodel = zoo.from_pretrained("path/to/this/folder")\n```\n\n'
        "## Training data\n\n"
        "| source | contents | sha256 | licence |\n|---|---|---|---|\n"
        f"{data_rows}\n"
        f"Held out for validation: {run.val_fraction:.0%} "
        f"({'the end of every record' if run.task == 'dna' else 'of the cells, at random'}).\n\n"
        "## Results\n\n"
        "| | |\n|---|---|\n"
        f"{results}\n"
        f"![loss curve]({LOSS_CURVE})\n\n"
        "## Run configuration\n\n"
        f"```json\n{json.dumps(run.to_dict(), indent=2)}\n```\n\n"
        "## Model configuration\n\n"
        f"```json\n{json.dumps(model_config.to_dict(), indent=2)}\n```\n"
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
