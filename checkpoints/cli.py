"""The hub subcommands of the ``biozoo`` console script: ``pull``, ``push``, ``card``, ``ls``,
``export`` (to ``transformers``) and ``convert-bin`` (a PyTorch pickle to safetensors).

`add_hub_commands` adds them to an `argparse` sub-parser set; each sets ``func``, which
takes the parsed arguments and returns the exit status. ``python -m checkpoints.cli`` runs
them alone. Downloads and uploads show ``huggingface_hub``'s progress bars; tokens come from
``HF_TOKEN`` or the saved login and are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import huggingface_hub

from checkpoints.card import CardDetails, CardError, render_card, validate_card
from checkpoints.catalog import CATALOG
from checkpoints.errors import CheckpointError
from checkpoints.pretrained import CARD_FILE, open_weights, read_config
from checkpoints.references import resolve
from checkpoints.upload import push_to_hub
from checkpoints.upstream import FAMILIES, load_upstream

FORMATS = ("transformers",)


def pull(args: argparse.Namespace) -> int:
    """Download (or find in the cache) a checkpoint, check it (an upstream model by
    converting it), print its folder and its commit (or, for a checkpoint shipped inside the
    package, the SHA-256 of its files), and an upstream model's family and licence."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder, provenance = resolve(
            args.ref, revision=args.revision, local_files_only=args.local_files_only
        )
    if provenance.family is None:
        open_weights(folder)
    else:
        load_upstream(folder, provenance.family)  # the conversion checks every tensor
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"folder: {folder}")
    if provenance.family is not None:
        family = FAMILIES[provenance.family]
        print(f"upstream: {family.title}, converted on load; licence: {family.licence}")
    if provenance.commit is not None:
        print(f"commit: {provenance.commit}")
    elif provenance.sha256:  # shipped inside the package: its digests identify it
        for name, digest in sorted(provenance.sha256.items()):
            print(f"sha256 {name}: {digest}")
    else:
        print("commit: (local folder)")
    return 0


def push(args: argparse.Namespace) -> int:
    """Upload a checkpoint folder in one commit and print the commit's URL."""
    commit = push_to_hub(
        args.folder,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        commit_message=args.message,
    )
    print(f"{huggingface_hub.constants.ENDPOINT}/{args.repo_id}/commit/{commit}")
    return 0


def card(args: argparse.Namespace) -> int:
    """Render a folder's card from its config (and ``--details``), validate it, print it."""
    folder = Path(args.folder)
    architecture, config = read_config(folder)
    details = None
    if args.details is not None:
        details = CardDetails.from_dict(json.loads(Path(args.details).read_text()))
    text = render_card(architecture, config, details)
    validate_card(text)
    if args.write:
        (folder / CARD_FILE).write_text(text)
    print(text)
    return 0


def ls(args: argparse.Namespace) -> int:
    """List the catalog (short name, pinned Hub revision, whether shipped, description),
    then the upstream families loaded by Hub id (family, Hub ids, licence and its source)."""
    if not CATALOG:
        print("the catalog is empty")
    for name, entry in sorted(CATALOG.items()):
        where = "shipped" if entry.shipped_folder() is not None else "hub"
        hub = (
            f"{entry.repo_id}@{entry.commit}" if entry.commit else f"{entry.repo_id} (not mirrored)"
        )
        print(f"{name}\t{hub}\t{where}\t{entry.description}")
    print("\nupstream models, converted on load (zoo.from_pretrained / biozoo pull):")
    for family in FAMILIES.values():
        ids = ", ".join(family.hub_ids) or "any such folder or repository"
        note = f"\t{family.note}" if family.note else ""
        print(f"{family.title}\t{ids}\tlicence: {family.licence} ({family.licence_source}){note}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Load a model and write it in ``--format`` (``transformers``) to a folder."""
    from checkpoints.pretrained import from_pretrained
    from checkpoints.transformers_export import export_transformers

    model = from_pretrained(args.ref, revision=args.revision)
    print(f"folder: {export_transformers(model, args.out)}")
    return 0


def convert_bin_command(args: argparse.Namespace) -> int:
    """Convert a folder's PyTorch pickle weights to ``model.safetensors`` (needs torch)."""
    from checkpoints.convert_bin import convert_bin

    print(f"wrote {convert_bin(args.folder)}")
    return 0


def add_hub_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pull``, ``push``, ``card``, ``ls``, ``export`` and ``convert-bin`` to
    `subparsers`."""
    p = subparsers.add_parser("pull", help="download a checkpoint and print its folder and commit")
    p.add_argument("ref", help="org/name[/folder][@revision], a catalog name or a folder")
    p.add_argument("--revision", help="branch, tag or commit SHA (instead of @revision)")
    p.add_argument("--local-files-only", action="store_true", help="use only the cache")
    p.set_defaults(func=pull)

    p = subparsers.add_parser("push", help="upload a checkpoint folder in one commit")
    p.add_argument("folder")
    p.add_argument("repo_id", help="org/name; created if missing")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=push)

    p = subparsers.add_parser("card", help="render and validate a checkpoint's model card")
    p.add_argument("folder")
    p.add_argument("--details", help="JSON file of CardDetails (training, evaluation, ...)")
    p.add_argument("--write", action="store_true", help="write it to the folder's README.md")
    p.set_defaults(func=card)

    p = subparsers.add_parser(
        "ls", help="list the catalog of published checkpoints and the upstream families"
    )
    p.set_defaults(func=ls)

    p = subparsers.add_parser(
        "export", help="write a model as a transformers AutoModelForMaskedLM folder"
    )
    p.add_argument("ref", help="org/name[/folder][@revision], a catalog name or a folder")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--format", choices=FORMATS, default="transformers")
    p.add_argument("--revision", help="branch, tag or commit SHA (instead of @revision)")
    p.set_defaults(func=export)

    p = subparsers.add_parser(
        "convert-bin",
        help="on your own machine, with torch: write model.safetensors from a trusted "
        "folder's pytorch_model.bin or best_model.pt (loads never read pickles)",
    )
    p.add_argument("folder")
    p.set_defaults(func=convert_bin_command)


def main(argv: list[str] | None = None) -> int:
    """Run one hub subcommand; errors print one line and exit with status 1."""
    parser = argparse.ArgumentParser(prog="biozoo")
    add_hub_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, CardError, huggingface_hub.errors.HfHubHTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
