"""The files a checkpoint folder carries beside its config, weights and card.

A checkpoint may hold data its loader or its card refers to: the gene vocabulary of an
expression model (``genes.tsv``), a token vocabulary (``vocab.txt``, ``vocab.json``), and
what the card links to (a loss curve, a confusion matrix, a training summary). Push and pull
carry every such file, chosen by `SIDECAR_PATTERNS`: plain data (text, tables, JSON and PNG
images) and never code, pickles or other weight formats, which no biozoo load reads.

A card that links to a file the folder does not hold is refused before a push, so a
published card never shows a broken image.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from checkpoints.errors import CheckpointError

SIDECAR_PATTERNS = ["*.tsv", "*.csv", "*.txt", "*.json", "*.png"]
# Markdown links and images whose target is a plain relative path (no scheme, no anchor).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def is_sidecar(name: str) -> bool:
    """Whether a file name is one a checkpoint carries beside its weights."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SIDECAR_PATTERNS)


def sidecar_files(folder: Path, *, exclude: set[str] = frozenset()) -> list[str]:
    """Names of the sidecar files directly inside `folder`, sorted, less `exclude`."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_sidecar(p.name)
        if p.name not in exclude
    )


def card_links(card_text: str) -> list[str]:
    """The relative file paths a Markdown card links to or shows, in order of appearance."""
    targets = []
    for target in _LINK.findall(card_text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL or an anchor
        target = target.split("#", 1)[0]
        if target and target not in targets:
            targets.append(target)
    return targets


def check_card_links(card_text: str, carried: set[str], where: str) -> None:
    """Refuse a card that links to files other than the `carried` ones.

    Args:
        card_text: the card's Markdown.
        carried: the names of the files that travel with the checkpoint.
        where: the checkpoint, for the message.

    Raises:
        CheckpointError: naming each such link.
    """
    broken = [link for link in card_links(card_text) if link not in carried]
    if broken:
        raise CheckpointError(
            f"the model card of {where} links to {', '.join(broken)}, which the checkpoint "
            f"does not carry (files beside the weights matching {', '.join(SIDECAR_PATTERNS)}); "
            "add them or remove the links"
        )
