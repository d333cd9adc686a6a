"""The ``biozoo`` console script.

Subcommands import what they need when they run, so ``biozoo --help`` is instant.
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="biozoo", description="Equinox model zoo for differentiable biology."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tour_parser = commands.add_parser(
        "tour",
        help="build each representation model, embed real DNA and cells, save, reload, compare",
    )
    tour_parser.add_argument(
        "--out", type=Path, default=Path("outputs/tour"), help="where checkpoints are written"
    )
    tour_parser.add_argument("--sequences", type=int, default=64, help="DNA sequences to embed")
    tour_parser.add_argument("--cells", type=int, default=128, help="cells to embed")
    tour_parser.set_defaults(run=tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``biozoo`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
