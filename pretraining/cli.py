"""The command line: ``python -m pretraining dna ...`` and ``python -m pretraining
expression ...`` (also wired as subcommands of the ``biozoo`` console script through
`add_subcommands` / `main`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from pretraining.optimizer import COMPUTE_DTYPES, OptimizerConfig
from pretraining.presets import INIT_LEARNING_RATE, PRESETS

DESCRIPTION = """\
Sharded pretraining of the zoo's transformers on one host or many.

  dna         masked language modelling of a TransformerSequenceEncoder on FASTA corpora
  expression  masked expression prediction of a DifferentiableFoundationModel on .h5ad counts
  prepare     pack FASTA files once into a memory-mapped corpus (`prepare dna`)

`--init REF` continues pretraining a checkpoint (ours, a Hub repository, or an imported
NT, DNABERT, Geneformer or scGPT folder) with its own architecture, tokenizer and genes;
Geneformer-style models train by masked gene-id prediction.

A run writes OUT/checkpoints (Orbax training state), OUT/metrics.jsonl and, at the end,
OUT/model (a zoo.from_pretrained folder with a model card and a loss curve). Run
`python -m pretraining dna --help` for every option.
"""

DATA_HELP = {
    "dna": "FASTA files (.fa, .fa.gz, .fa.xz) or dataset names such as human-chrX-70Mb, "
    "bacteria-NC_008253, klebsiella-HS11286 (fetched from Debian packages, cached under "
    "$BIOZOO_CACHE and checksummed), or corpus folders made by `biozoo prepare dna`",
    "expression": ".h5ad files with raw integer counts in X, or dataset names: "
    "pbmc68k_reduced (from the scanpy wheel), pbmc3k, pbmc-3chem, mouse-10k (from "
    "$BIOZOO_SHARED_DATA), directories or glob patterns of .h5ad/.zarr files; files may hold "
    "different genes (aligned by Ensembl ID, else by symbol)",
}


def add_run_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """The options of one task's subcommand."""
    defaults = OptimizerConfig()
    data = parser.add_argument_group("data and model")
    data.add_argument("data", nargs="+", help=DATA_HELP[task])
    data.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model size: tiny (64 wide, 2 layers; tests), small (256 wide, 4 layers), "
        "base (768 wide, 12 layers) (default: tiny; not with --init)",
    )
    data.add_argument(
        "--init",
        default="",
        metavar="REF",
        help="continue pretraining this checkpoint instead of a fresh preset model: a model "
        "folder (a previous run's OUT/model), a catalog name (dna-encoder-tiny, "
        "fm-pbmc3k-tiny), a Hub repo org/name[@revision], or a folder in the layout of NT "
        "v1/v2, DNABERT, Geneformer or scGPT (for expression, give --genes when the folder has "
        "no genes.tsv); "
        "its architecture, tokenizer, dropout and genes are "
        "kept, so --preset, --dropout"
        + (" and --max-tokens" if task == "expression" else "")
        + " may not be given",
    )
    if task == "dna":
        data.add_argument(
            "--seq-len",
            type=int,
            default=0,
            help="tokens per window, [CLS] included (default: the preset's, 128/512/512, or "
            "the --init model's max_len)",
        )
    else:
        data.add_argument(
            "--max-tokens",
            type=int,
            default=0,
            help="most gene tokens per cell (default: "
            "the preset's, 64/256/1024, capped at the number of genes)",
        )
        data.add_argument(
            "--genes",
            default="",
            help="gene vocabulary to align the files to: a genes.tsv, or a model folder "
            "holding one (default: the union of the files' genes)",
        )
    data.add_argument(
        "--dropout", type=float, default=None, help="dropout (default: 0.1; not with --init)"
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share held out for validation: the end of every DNA record, or random cells "
        "(default: %(default)s)",
    )

    loop = parser.add_argument_group("training")
    loop.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="optimiser updates; the cosine learning-rate decay ends here, so --resume keeps "
        "it (default: %(default)s)",
    )
    loop.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="examples per update over all devices and processes; must be a multiple of the "
        "mesh's data x fsdp size times --accumulate (default: %(default)s)",
    )
    loop.add_argument(
        "--seed", type=int, default=0, help="seeds weights, data order, masks, dropout"
    )
    loop.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: the preset's, 2e-3/5e-4/1e-4; 1e-4 with --init)",
    )
    loop.add_argument(
        "--warmup",
        type=int,
        default=defaults.warmup_steps,
        help="linear warm-up steps, then cosine decay (default: %(default)s)",
    )
    loop.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="AdamW decoupled weight decay (default: %(default)s)",
    )
    loop.add_argument(
        "--clip-norm",
        type=float,
        default=defaults.clip_norm,
        help="clip the global gradient norm to this (default: %(default)s)",
    )
    loop.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per update (gradient accumulation) (default: 1)",
    )
    loop.add_argument(
        "--compute-dtype",
        choices=sorted(COMPUTE_DTYPES),
        default="float32",
        help="dtype of the forward/backward pass; weights stay float32",
    )

    output = parser.add_argument_group("output, checkpoints, validation")
    output.add_argument("--out", required=True, help="output folder of the run")
    output.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in OUT/checkpoints with the same command. "
        "Every training setting must match the saved run, --steps included (it fixes the "
        "learning-rate schedule), or the run is refused; only --mesh, --save-every, --keep, "
        "--eval-every, --eval-batches and --no-progress may change. A finished run is "
        "re-exported.",
    )
    output.add_argument(
        "--save-every",
        type=int,
        default=200,
        help="save training state every N steps (0: only at the end)",
    )
    output.add_argument(
        "--keep", type=int, default=3, help="training checkpoints kept (default: 3)"
    )
    output.add_argument(
        "--eval-every", type=int, default=200, help="validate every N steps (0: only at the end)"
    )
    output.add_argument(
        "--eval-batches", type=int, default=4, help="held-out batches per validation (default: 4)"
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")

    devices = parser.add_argument_group("devices and processes")
    devices.add_argument(
        "--mesh",
        default="",
        help="device mesh as axis=size pairs over data, fsdp and model, e.g. data=4,fsdp=2 "
        "or data=2,fsdp=2,model=2; -1 takes the remaining devices (default: data=-1)",
    )
    devices.add_argument("--coordinator", help="host:port of process 0, for multi-host runs")
    devices.add_argument("--num-processes", type=int, help="processes in a multi-host run")
    devices.add_argument("--process-id", type=int, help="this process's index in 0..N-1")
    devices.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host run, detecting coordinator and process ids from the cluster "
        "environment (SLURM, Open MPI, TPU pods, ...) where the flags above are not given",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pretraining`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m pretraining",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    add_subcommands(tasks)
    add_prepare_commands(tasks)
    return parser


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dna`` and ``expression`` to another program's subcommands."""
    for task, summary in (
        ("dna", "masked language modelling of DNA (TransformerSequenceEncoder)"),
        ("expression", "masked expression of single cells (DifferentiableFoundationModel)"),
    ):
        sub = subparsers.add_parser(task, help=summary, description=summary)
        add_run_arguments(sub, task)
        sub.set_defaults(run=run_from_arguments)


def add_prepare_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare dna``, which packs FASTA files into a memory-mapped corpus once, to
    another program's subcommands."""
    prepare = subparsers.add_parser(
        "prepare", help="build a packed corpus once, for runs to map rather than load"
    )
    kinds = prepare.add_subparsers(dest="kind", required=True, metavar="KIND")
    summary = "pack FASTA files into a memory-mapped DNA corpus (one byte per base)"
    dna = kinds.add_parser("dna", help=summary, description=summary)
    dna.add_argument(
        "fasta", nargs="+", help="FASTA files (.fa, .fa.gz, .fa.xz) or DNA dataset names"
    )
    dna.add_argument(
        "--out", required=True, help="the new corpus folder, then a data source of `pretrain dna`"
    )
    dna.set_defaults(run=prepare_from_arguments)


def prepare_from_arguments(args: argparse.Namespace) -> int:
    """Pack the FASTA files of ``biozoo prepare dna`` and print the corpus summary."""
    from pretraining.dna_data import DnaCorpus, prepare_packed

    folder = prepare_packed(args.fasta, args.out)
    print(DnaCorpus([str(folder)]).describe(), file=sys.stderr)
    print(f"prepared {folder}", file=sys.stderr)
    return 0


def start_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` with the explicit flags, or with the cluster's
    auto-detection for ``--distributed``; nothing for a single-process run. CPU processes
    exchange data through gloo collectives."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if all(value is None for value in explicit) and not args.distributed:
        return
    if any(value is not None for value in explicit) and any(value is None for value in explicit):
        raise SystemExit("--coordinator, --num-processes and --process-id go together")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def run_config(args: argparse.Namespace):
    """The `RunConfig` the arguments describe; with ``--init``, the reference's digest
    (`pretraining.initial_model.init_digest`) is resolved and recorded."""
    from pretraining.initial_model import init_digest
    from pretraining.run_config import DEFAULT_DROPOUT, RunConfig

    if args.init:  # RunConfig refuses --preset, --dropout or --max-tokens beside it
        preset_name, learning_rate = args.preset or "", INIT_LEARNING_RATE
    else:
        preset_name = args.preset or "tiny"
        learning_rate = PRESETS[preset_name].learning_rate
    config = RunConfig(
        task=args.task,
        data=tuple(args.data),
        preset=preset_name,
        init=args.init,
        seq_len=getattr(args, "seq_len", 0),
        max_tokens=getattr(args, "max_tokens", 0),
        genes=getattr(args, "genes", ""),
        dropout=DEFAULT_DROPOUT if args.dropout is None else args.dropout,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        keep=args.keep,
        optimizer=OptimizerConfig(
            learning_rate=learning_rate if args.lr is None else args.lr,
            warmup_steps=args.warmup,
            weight_decay=args.weight_decay,
            clip_norm=args.clip_norm,
            accumulate_steps=args.accumulate,
            compute_dtype=args.compute_dtype,
        ),
    )
    # what the reference names now, so a resume that would load other weights is refused
    return dataclasses.replace(config, init_digest=init_digest(args.init)) if args.init else config


def run_from_arguments(args: argparse.Namespace) -> int:
    """Run the pretraining the parsed arguments describe."""
    from pretraining.train import Run

    config = run_config(args)  # a bad setting fails here, before JAX starts any device work
    start_distributed(args)
    folder = Run(config, args.out, mesh=args.mesh, resume=args.resume).train(
        progress=not args.no_progress
    )
    if folder is not None:
        print(f"exported {folder}", file=sys.stderr)
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that report a problem with the settings or the data."""
    from pretraining.dna_data import CorpusError
    from pretraining.expression_data import ExpressionDataError
    from pretraining.initial_model import InitError
    from pretraining.mesh import MeshError
    from pretraining.sharding import ShardingError
    from pretraining.sources import FetchError
    from pretraining.state import StateError
    from pretraining.steps import BatchSizeError
    from pretraining.train import RunError
    from zoo.common.config import ConfigError
    from zoo.sequence.nucleotides import SequenceError

    return (
        BatchSizeError,
        ConfigError,
        CorpusError,
        ExpressionDataError,
        FetchError,
        InitError,
        MeshError,
        RunError,
        SequenceError,
        ShardingError,
        StateError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse `argv` (default: the command line) and run. Errors in the
    settings or the data are printed as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
