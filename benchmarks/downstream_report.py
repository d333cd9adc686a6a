"""The downstream suite's outputs: a Markdown table and a PNG of MCC with its intervals."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bootstrap import METRICS

HEADERS = {"mcc": "MCC", "macro_f1": "macro-F1", "auroc": "AUROC"}


def interval(values: list[float]) -> str:
    """``value [low, high]`` to three decimals."""
    value, low, high = values
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(rows: list[dict], budget: str, left_out: dict[str, str]) -> str:
    """One line per (task, model): test n, each metric with its 95 % bootstrap interval,
    and seconds; the budget above, the tasks left out below."""
    metric_headers = " | ".join(f"{HEADERS[m]} [95% CI]" for m in METRICS)
    lines = [
        f"Budget: {budget}.",
        "",
        f"| task | model | train / test | {metric_headers} | s |",
        "| --- | --- | --- |" + " --- |" * len(METRICS) + " --- |",
    ]
    for r in rows:
        metrics = " | ".join(interval(r[m]) for m in METRICS)
        lines.append(
            f"| {r['task']} | {r['model']} | {r['n_train']} / {r['n_test']} | {metrics} | "
            f"{r['seconds']:.0f} |"
        )
    notes = {r["task"]: r["note"] for r in rows if r["note"]}
    lines += [""] + [f"- {task}: {note}." for task, note in notes.items()]
    lines += [f"- left out {task}: {reason}" for task, reason in left_out.items()]
    return "\n".join(lines).rstrip() + "\n"


def plot_mcc(rows: list[dict], path: Path, title: str) -> None:
    """One panel per task: each model's test MCC with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    columns = min(4, len(tasks))
    n_rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(
        n_rows, columns, figsize=(3.6 * columns, 3.0 * n_rows), squeeze=False, sharey=True
    )
    for ax, task in zip(axes.flat, tasks, strict=False):
        mine = [r for r in rows if r["task"] == task]
        values = [r["mcc"][0] for r in mine]
        below = [r["mcc"][0] - r["mcc"][1] for r in mine]
        above = [r["mcc"][2] - r["mcc"][0] for r in mine]
        ax.errorbar(range(len(mine)), values, yerr=[below, above], fmt="o", capsize=3)
        ax.set_xticks(range(len(mine)), [r["model"] for r in mine], rotation=60, ha="right")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel("test MCC")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=7, wrap=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
