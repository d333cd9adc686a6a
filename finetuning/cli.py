"""The ``biozoo`` console script.

- ``biozoo tour``: every representation model on real DNA and cells, saved and reloaded;
- ``biozoo pull | push | card | ls | export | convert-bin``: the checkpoint hub, upstream
  models by Hub id, export to ``transformers`` and the local conversion of a PyTorch pickle
  (`checkpoints.cli`);
- ``biozoo pretrain dna | expression``: sharded pretraining (`pretraining.cli`);
- ``biozoo prepare dna FASTA... --out CORPUS``: a packed, memory-mapped DNA corpus;
- ``biozoo finetune TASK``: fine-tune a checkpoint (or a fresh model) on a downstream task;
  ``biozoo finetune --base REF --train FILE [--validation FILE --test FILE]``: on the
  user's own sequences (FASTA, TSV, CSV, Parquet) or cells (.h5ad);
- ``biozoo embed REF DATA --out OUT``, ``biozoo predict MODEL DATA --out OUT`` and
  ``biozoo evaluate MODEL DATA --out METRICS``: the user's own data (`finetuning.api`).

Heavy modules are imported when a subcommand runs, so ``biozoo --help`` is quick. Errors a
user can fix print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def tour(args: argparse.Namespace) -> int:
    """Run the model tour and print its summary table."""
    from finetuning.model_tour import format_table, run_tour

    rows = run_tour(args.out, n_sequences=args.sequences, n_cells=args.cells)
    print(format_table(rows))
    return 0 if all(row["identical after reload"] for row in rows) else 1


def demo(args: argparse.Namespace) -> int:
    """Run the main job and print its summary table."""
    import dataclasses

    from finetuning.main_job import run_main_job
    from finetuning.model_tour import format_table

    rows = run_main_job(
        Path(args.out), fine_tune_steps=args.fine_tune_steps, pretrain_steps=args.pretrain_steps
    )
    table = [
        {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()}
        for r in rows
    ]
    print(format_table(table))
    return 0


def read_keywords(args: argparse.Namespace) -> dict:
    """The `finetuning.api.read_options` keywords of the data options."""
    return {
        "sequence_column": args.sequence_column,
        "label_column": args.label_column,
        "name_column": args.name_column,
        "split_column": args.split_column,
        "layer": args.layer,
        "label_key": args.label_key,
        "truncate": args.truncate,
        "min_gene_fraction": args.min_gene_fraction,
    }


def add_read_options(p: argparse.ArgumentParser) -> None:
    """Where the inputs, labels and splits of the user's files are."""
    p.add_argument("--sequence-column", default="sequence", help="table column of sequences")
    p.add_argument("--label-column", default="label", help="table column of labels or targets")
    p.add_argument("--name-column", help="table column of example names (default: row number)")
    p.add_argument("--split-column", default="split", help="train / validation / test column")
    p.add_argument("--layer", help=".h5ad layer holding raw counts (default: X)")
    p.add_argument("--label-key", help=".h5ad obs column of cell labels")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut sequences longer than the model takes (default: refuse them)",
    )
    p.add_argument(
        "--min-gene-fraction",
        type=float,
        default=0.5,
        help="cells are matched to an expression model's genes by ID or symbol; refuse a file "
        "holding less than this fraction of them (default: %(default)s)",
    )


def embed(args: argparse.Namespace) -> int:
    """Embed the user's sequences or cells and write them with the model's provenance."""
    from finetuning.api import embed as embed_data

    embeddings = embed_data(
        args.model,
        args.data,
        out=args.out,
        per_token=args.per_token,
        key_added=args.key_added,
        batch_size=args.batch_size,
        **read_keywords(args),
    )
    print(f"embedded {len(embeddings)} examples: {args.out}")
    return 0


def predict(args: argparse.Namespace) -> int:
    """Write the predictions of a fine-tuned model on the user's data."""
    from finetuning.api import predict as predict_data

    table = predict_data(
        args.model, args.data, out=args.out, batch_size=args.batch_size, **read_keywords(args)
    )
    print(f"predicted {len(table)} examples: {args.out}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Print the metrics of a fine-tuned model on the user's labelled data."""
    from finetuning.api import evaluate as evaluate_data
    from finetuning.api import format_metrics

    report = evaluate_data(
        args.model, args.data, out=args.out, batch_size=args.batch_size, **read_keywords(args)
    )
    print(format_metrics(report))
    print(f"saved: {args.out} and its plot beside it")
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """The ``embed``, ``predict`` and ``evaluate`` subcommands."""
    p = commands.add_parser("embed", help="embed your sequences or cells with a checkpoint")
    p.add_argument("model", help="checkpoint (folder, catalog name, org/name@rev)")
    p.add_argument("data", help="FASTA (.fa, .fa.gz), table (.tsv, .csv, .parquet) or .h5ad")
    p.add_argument(
        "--out",
        required=True,
        help="sequences: .npy (+ .json names), .npz or .parquet; cells: an .h5ad copy",
    )
    p.add_argument(
        "--per-token",
        action="store_true",
        help="per-token hidden states (sequences; .npz with offsets, or .parquet lists)",
    )
    p.add_argument("--key-added", default="X_biozoo", help="obsm key of cell embeddings")
    add_read_options(p)
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch")
    p.set_defaults(func=embed)
    for name, function, out_help in (
        ("predict", predict, "predictions: .tsv, .csv, .parquet, or (cells) an .h5ad copy"),
        ("evaluate", evaluate, "metrics file (.tsv or .json); the plot is written beside it"),
    ):
        p = commands.add_parser(name, help=f"{name} a fine-tuned model on your data")
        p.add_argument("model", help="fine-tuned checkpoint (folder, org/name@rev)")
        p.add_argument("data", help="FASTA, table (.tsv, .csv, .parquet) or .h5ad")
        p.add_argument(
            "--out", required=name == "predict", default="evaluation/metrics.tsv", help=out_help
        )
        add_read_options(p)
        p.add_argument("--batch-size", type=int, default=64, help="examples per batch")
        p.set_defaults(func=function)


def finetune_user_data(args: argparse.Namespace, config, mesh, state) -> int:
    """Fine-tune `args.base` on the user's files (on `mesh`, saving training state to
    `state`) and save the result with its card."""
    from finetuning.api import finetune as finetune_data

    if args.base is None:
        raise SystemExit("error: fine-tuning on your own files needs --base (a checkpoint)")
    result, folder = finetune_data(
        args.train,
        base=args.base,
        validation=args.validation,
        test=args.test,
        out=args.out,
        target=args.target,
        config=config,
        mesh=mesh,
        checkpoints=state,
        resume=args.resume,
        **read_keywords(args),
    )
    return report_fine_tune(result, folder, args.push, f" (splits: {folder / 'splits.tsv'})")


def report_fine_tune(result, folder: Path, push: str | None, saved_note: str = "") -> int:
    """Print a fine-tune's resume point, test metrics and folder; push it if asked."""
    import checkpoints

    if result.resumed_from is not None:
        print(f"resumed from step {result.resumed_from}")
    print(f"test: {', '.join(f'{k}={v:.3f}' for k, v in result.test.items())}")
    print(f"saved: {folder}{saved_note}")
    if push:
        print(f"pushed: commit {checkpoints.push_to_hub(folder, push)}")
    return 0


def finetune(args: argparse.Namespace) -> int:
    """Fine-tune on a task and save the result with its card."""
    import checkpoints
    from finetuning.backbones import default_backbone
    from finetuning.run import run_fine_tune
    from finetuning.tasks import TASKS
    from finetuning.train import FineTuneConfig
    from pretraining.mesh import make_mesh
    from pretraining.state import TrainingCheckpoints
    from pretraining.steps import check_batch_size

    if args.resume and not args.checkpoint_dir:
        raise SystemExit("error: --resume needs the --checkpoint-dir of the fine-tune to continue")
    config = FineTuneConfig(
        strategy=args.strategy,
        freeze_layers=args.freeze_layers,
        lora_rank=args.lora_rank,
        learning_rate=args.lr,
        layer_decay=args.layer_decay,
        batch_size=args.batch_size,
        max_steps=args.steps,
        warmup_steps=min(args.steps // 10, 100),
        eval_every=args.eval_every,
        seed=args.seed,
    )
    mesh = make_mesh(args.mesh)  # settings are checked before any data is read
    check_batch_size(config.batch_size, mesh, 1)
    if (args.task is None) == (args.train is None):
        raise SystemExit("error: give a built-in TASK or --train FILE (your own data), not both")
    state = None
    if args.checkpoint_dir:
        state = TrainingCheckpoints(args.checkpoint_dir, save_every=args.save_every, keep=2)
    if args.train is not None:
        return finetune_user_data(args, config, mesh, state)
    task = TASKS[args.task]()
    if args.base:
        backbone, provenance = checkpoints.from_pretrained(args.base, with_provenance=True)
        base_model = provenance.repo_id or args.base
    else:
        backbone, base_model = default_backbone(task), None
    result, folder = run_fine_tune(
        task,
        backbone,
        config,
        Path(args.out),
        base_model=base_model,
        mesh=mesh,
        checkpoints=state,
        resume=args.resume,
    )
    return report_fine_tune(result, folder, args.push)


def add_finetune_command(commands: argparse._SubParsersAction) -> None:
    """The ``finetune`` subcommand and its options."""
    from finetuning.tasks import TASKS  # light: the data are read when the task is built

    p = commands.add_parser("finetune", help="fine-tune a checkpoint on a downstream task")
    p.add_argument("task", nargs="?", choices=sorted(TASKS), help="a built-in downstream task")
    p.add_argument("--train", help="your labelled file (alone: split by its split column or drawn)")
    p.add_argument("--validation", help="your validation file (with --test)")
    p.add_argument("--test", help="your test file (with --validation)")
    p.add_argument(
        "--target",
        choices=("classification", "regression", "auto"),
        default="classification",
        help="auto: regression when every label is a number and there are more than 10 "
        "distinct ones or a fraction (default: %(default)s)",
    )
    add_read_options(p)
    p.add_argument("--base", help="checkpoint to start from (folder, catalog name, org/name@rev)")
    p.add_argument("--strategy", choices=("linear", "full", "partial", "lora"), default="full")
    p.add_argument("--freeze-layers", type=int, default=1, help="frozen layers for partial")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA factors")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300, help="most optimiser steps")
    p.add_argument("--eval-every", type=int, default=50, help="steps between validations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/finetune", help="where the result is saved")
    p.add_argument("--push", metavar="REPO_ID", help="also push the result to the Hub")
    p.add_argument(
        "--mesh",
        default="",
        help="device mesh as axis=size pairs over data, fsdp and model, e.g. data=4,fsdp=2; "
        "-1 takes the remaining devices; --batch-size must be a multiple of data x fsdp "
        "(default: data=-1, every device data parallel)",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="save the training state (weights, optimiser, best model, early stopping) here, "
        "so that a killed fine-tune can be resumed (default: no training checkpoints)",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=50,
        help="steps between training checkpoints; 0: only at the end (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --checkpoint-dir (same command "
        "otherwise); the result is that of an uninterrupted fine-tune",
    )
    p.set_defaults(func=finetune)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from checkpoints.cli import add_hub_commands
    from pretraining.cli import add_prepare_commands
    from pretraining.cli import add_subcommands as add_pretraining_commands

    parser = argparse.ArgumentParser(
        prog="biozoo", description="Equinox model zoo for differentiable biology."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "demo",
        help="the main job: load the published DNA encoder, fine-tune it against a from-scratch "
        "baseline, pretrain on 8 simulated devices with resume, save and reload",
    )
    p.add_argument("--out", default="outputs/demo", help="where everything is written")
    p.add_argument("--fine-tune-steps", type=int, default=200, help="budget of each fine-tune")
    p.add_argument("--pretrain-steps", type=int, default=40, help="steps of the pretraining run")
    p.set_defaults(func=demo)
    p = commands.add_parser(
        "tour",
        help="build each representation model, embed real DNA and cells, save, reload, compare",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/tour"), help="checkpoint folder")
    p.add_argument("--sequences", type=int, default=64, help="DNA sequences to embed")
    p.add_argument("--cells", type=int, default=128, help="cells to embed")
    p.set_defaults(func=tour)
    add_hub_commands(commands)
    pretrain = commands.add_parser("pretrain", help="sharded pretraining (dna or expression)")
    add_pretraining_commands(pretrain.add_subparsers(dest="task", required=True, metavar="TASK"))
    add_prepare_commands(commands)
    add_finetune_command(commands)
    add_data_commands(commands)
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input rather than a bug."""
    import huggingface_hub

    from checkpoints import CheckpointError
    from checkpoints.card import CardError
    from finetuning.user_data import UserDataError
    from pretraining.cli import user_errors as pretraining_errors
    from zoo.common.config import ConfigError

    hub = (CheckpointError, CardError, ConfigError, huggingface_hub.errors.HfHubHTTPError)
    return (*hub, UserDataError, *pretraining_errors())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``biozoo`` console script."""
    args = build_parser().parse_args(argv)
    run = getattr(args, "func", None) or args.run
    try:
        return run(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
