"""Downstream evaluation suite: the published checkpoints against baselines trained in the
same run, on DNA and cell tasks with fixed splits.

Tasks (`benchmarks.downstream_dna_tasks`, `benchmarks.downstream_cell_tasks`): planted
TGACTCA (issue 13), four JASPAR motifs planted on random and on chrX background at two
difficulty levels, Oct4 vs MafK peaks, CpG islands and FANTOM5 enhancers against
GC-matched chrX background, and the cell types of pbmc3k and pbmc68k with all training
labels and with 10 per type. A task whose data cannot be had (no network, no
``hg19_annotation`` folder, no pbmc3k file) is left out with the reason printed.

Models (`benchmarks.downstream_baselines`), all given the same data; the neural ones the
same step budget, batch size and peak learning rate:

- DNA: 6-mer-frequency logistic regression, a ``zoo.SequenceEmbedding`` CNN from scratch,
  the checkpoint's architecture from scratch, and the checkpoint (``--dna-checkpoint``,
  default ``dna-encoder-tiny``) fine-tuned with the ``full`` and ``linear`` strategies;
- cells: PCA of highly variable genes + logistic regression and a ``zoo.VAENormalizer``
  latent + logistic regression (both on the file's own genes), the checkpoint's
  architecture from scratch (keeping its fitted gene statistics), and the checkpoint
  (``--cell-checkpoint``, default ``fm-pbmc3k-tiny``; cells lined up with its genes)
  fine-tuned ``full`` and ``linear``.

Reported: MCC, macro-F1 and AUROC on the test split, each with a 95 % percentile bootstrap
interval (`benchmarks.bootstrap`), as a Markdown table (printed and written to
``--out/downstream.md``), a PNG of MCC with its intervals (``--out/downstream.png``), and a
JSON line at the end.

``python -m benchmarks.downstream [--quick] [--tasks ...] [--models ...] [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import downstream_baselines as baselines
from benchmarks.bootstrap import METRICS, bootstrap_metrics
from benchmarks.downstream_cell_tasks import aligned, build_cell_task, cell_tasks, gene_names
from benchmarks.downstream_dna_tasks import dna_tasks
from benchmarks.downstream_report import markdown_table, plot_mcc
from finetuning.backbones import same_architecture_from_scratch
from finetuning.inference import load_model
from finetuning.train import FineTuneConfig
from pretraining.expression_data import ExpressionDataError, shared_data_dir
from pretraining.sources import FetchError

DNA_MODELS = (
    "6-mer LR",
    "CNN scratch",
    "transformer scratch",
    "checkpoint full",
    "checkpoint linear",
)
CELL_MODELS = (
    "HVG PCA + LR",
    "VAE latent + LR",
    "transformer scratch",
    "checkpoint full",
    "checkpoint linear",
)
QUICK = {"steps": 20, "train": 240, "test": 200, "vae_epochs": 5, "bootstrap": 200}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small preset: {QUICK}")
    parser.add_argument("--tasks", nargs="*", help="run only these tasks (default: all)")
    parser.add_argument("--models", nargs="*", help="run only these models (default: all)")
    parser.add_argument("--dna-checkpoint", default="dna-encoder-tiny", metavar="REF")
    parser.add_argument("--cell-checkpoint", default="fm-pbmc3k-tiny", metavar="REF")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per neural model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--train", type=int, default=2000, help="synthetic training sequences")
    parser.add_argument("--test", type=int, default=600, help="synthetic test sequences")
    parser.add_argument("--vae-epochs", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--annotation", type=Path, default=shared_data_dir() / "hg19_annotation")
    parser.add_argument("--out", type=Path, default=Path("outputs/downstream"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args(argv)
    return args


def dna_models(task, args, config: FineTuneConfig, checkpoint):
    """The DNA models by name, each a function giving test probabilities."""
    progress = not args.no_progress
    return {
        "6-mer LR": lambda: baselines.kmer_logistic(task, 6),
        "CNN scratch": lambda: baselines.neural(
            task, baselines.fresh_cnn(args.seed + 1), config, progress=progress
        ),
        "transformer scratch": lambda: baselines.neural(
            task, same_architecture_from_scratch(checkpoint), config, progress=progress
        ),
        "checkpoint full": lambda: baselines.neural(task, checkpoint, config, progress=progress),
        "checkpoint linear": lambda: baselines.neural(
            task, checkpoint, _with(config, strategy="linear"), progress=progress
        ),
    }


def cell_models(native, task, args, config: FineTuneConfig, checkpoint):
    """The cell models by name, each a function giving test probabilities: the classical
    baselines read the `native` task (the file's own genes), the transformers `task` (the
    same cells lined up with the checkpoint's genes)."""
    progress = not args.no_progress
    return {
        "HVG PCA + LR": lambda: baselines.hvg_pca_logistic(native),
        "VAE latent + LR": lambda: baselines.vae_logistic(
            native, args.vae_epochs, seed=args.seed, progress=progress
        ),
        "transformer scratch": lambda: baselines.neural(
            task, same_architecture_from_scratch(checkpoint), config, progress=progress
        ),
        "checkpoint full": lambda: baselines.neural(task, checkpoint, config, progress=progress),
        "checkpoint linear": lambda: baselines.neural(
            task, checkpoint, _with(config, strategy="linear"), progress=progress
        ),
    }


def _with(config: FineTuneConfig, **changes) -> FineTuneConfig:
    return FineTuneConfig.from_dict({**config.to_dict(), **changes})


def task_builders(args) -> tuple[dict, dict[str, str]]:
    """Every task by name (its modality and a function building it), and the tasks left
    out with the reason."""
    sizes = {"train": args.train, "validation": args.test // 2, "test": args.test}
    annotation = (
        args.annotation if (args.annotation / "cpg_islands_hg19_ucsc.txt.gz").exists() else None
    )
    builders = {
        name: ("dna", build) for name, build in dna_tasks(sizes, annotation, args.seed).items()
    }
    left_out = {}
    if annotation is None:
        reason = f"no UCSC/FANTOM5 tracks at {args.annotation}"
        left_out = {"cpg-islands": reason, "enhancers": reason}
    for name, (source, per_class) in cell_tasks().items():
        builders[name] = ("cells", lambda s=source, p=per_class: (build_cell_task(s, p), s))
    return builders, left_out


def write_outputs(rows: list[dict], budget: str, left_out: dict[str, str], out: Path) -> None:
    """Write ``downstream.md`` and, with any rows, ``downstream.png`` into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "downstream.md").write_text(markdown_table(rows, budget, left_out))
    if rows:
        plot_mcc(rows, out / "downstream.png", budget)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the suite (see the module docstring); returns the table's rows."""
    args = parse_args(argv)
    config = FineTuneConfig(
        strategy="full",
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_steps=args.steps,
        warmup_steps=args.steps // 10,
        eval_every=max(1, args.steps // 6),
        seed=args.seed,
    )
    budget = (
        f"{args.steps} steps of batch {args.batch_size} at peak lr {args.lr:g} for every neural "
        f"model; synthetic tasks {args.train} train / {args.test // 2} validation / {args.test} "
        f"test; VAE {args.vae_epochs} epochs; {args.bootstrap} bootstrap resamples; "
        f"checkpoints {args.dna_checkpoint}, {args.cell_checkpoint}"
    )
    builders, left_out = task_builders(args)
    for name, reason in left_out.items():
        print(f"left out {name}: {reason}", file=sys.stderr)
    chosen = [t for t in args.tasks or builders if t not in left_out]
    unknown = sorted(set(chosen) - set(builders))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {sorted(builders)}")
    checkpoints = {}
    rows = []
    for t, name in enumerate(chosen):
        modality, build = builders[name]
        print(f"[task {t + 1}/{len(chosen)}] {name}", file=sys.stderr, flush=True)
        try:
            built = build()
        except (OSError, FetchError, ExpressionDataError) as error:  # data not to be had
            left_out[name] = f"{type(error).__name__}: {error}"
            print(f"left out {name}: {left_out[name]}", file=sys.stderr, flush=True)
            continue
        ref = args.dna_checkpoint if modality == "dna" else args.cell_checkpoint
        if ref not in checkpoints:
            checkpoints[ref] = load_model(ref, inference=False)
        checkpoint, _, genes = checkpoints[ref]
        if modality == "dna":
            task, note = built, ""
            models = dna_models(task, args, config, checkpoint)
        else:
            task, fraction = aligned(built[0], gene_names(built[1]), genes)
            note = f"{fraction:.0%} of the checkpoint's genes found (transformer rows)"
            models = cell_models(built[0], task, args, config, checkpoint)
        for model_name, run in models.items():
            if args.models and model_name not in args.models:
                continue
            print(f"  {name}: {model_name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            probabilities = run()
            estimates = bootstrap_metrics(
                task.test.labels, probabilities, n_resamples=args.bootstrap, seed=args.seed
            )
            rows.append(
                {
                    "task": name,
                    "model": model_name,
                    "n_train": len(task.train),
                    "n_test": len(task.test),
                    "note": note,
                    "seconds": round(time.perf_counter() - start, 1),
                    **{
                        m: [estimates[m].value, estimates[m].low, estimates[m].high]
                        for m in METRICS
                    },
                }
            )
            write_outputs(rows, budget, left_out, args.out)  # a run cut short keeps its rows
    print(markdown_table(rows, budget, left_out))
    write_outputs(rows, budget, left_out, args.out)
    summary = {"name": "downstream", "budget": budget, "rows": rows, "left_out": left_out}
    print(json.dumps(summary, default=float))
    return rows


if __name__ == "__main__":
    main()
