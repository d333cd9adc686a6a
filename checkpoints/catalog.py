"""The checkpoints this project publishes, by short name.

An entry pins a Hub repository to one commit and lists the SHA-256 of every file a load
reads, so ``zoo.from_pretrained("<short name>")`` is reproducible and tamper-evident. A
checkpoint may also ship inside the installed packages (`CatalogEntry.folder`); it is then
read from there, verified against the same digests, and the Hub is never contacted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

PACKAGES_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One published checkpoint.

    Attributes:
        description: one line on what the model is.
        repo_id: the Hub repository, ``org/name``.
        commit: the 40-hex commit SHA of the published revision; None while the checkpoint
            ships only inside the package and is not yet mirrored to the Hub.
        sha256: ``{file name: SHA-256}`` of ``config.json``, every weight file and any gene
            list (``genes.tsv``).
        folder: the checkpoint's folder relative to the directory holding the installed
            packages (e.g. ``"finetuning/published/dna-encoder"``), if it ships with them.
    """

    description: str
    repo_id: str
    commit: str | None
    sha256: dict[str, str]
    folder: str | None = None

    def shipped_folder(self) -> Path | None:
        """The shipped folder if it is installed, else None."""
        if self.folder is None:
            return None
        path = PACKAGES_ROOT / self.folder
        return path if path.is_dir() else None


CATALOG: dict[str, CatalogEntry] = {
    "dna-encoder-tiny": CatalogEntry(
        description="TransformerSequenceEncoder (64 wide, 2 layers, nucleotide tokens) "
        "pretrained by masked language modelling on human chrX and bacterial genomes",
        repo_id="biozoo/dna-encoder-tiny",
        commit=None,
        sha256={
            "config.json": "5f9bb2c86cecc4eb4af3a818eadb0be62d9c5a929a1b8e22554190a78a69ca74",
            "model.safetensors": "38a5c94d2d7e1a3f321da2df34f72b8437ff96d1a0585b4f730b8639914c26b4",
        },
        folder="finetuning/published/dna-encoder-tiny",
    ),
    "fm-pbmc3k-tiny": CatalogEntry(
        description="DifferentiableFoundationModel (64 wide, 2 layers, 2,000 genes) "
        "pretrained by masked expression prediction on pbmc3k",
        repo_id="biozoo/fm-pbmc3k-tiny",
        commit=None,
        sha256={
            "config.json": "7ed9f9b3a62cf76bb59afb6b46a27565218b881121cf7721275e2fd5d058732b",
            "model.safetensors": "9c4ab5ab01cb2b5fbcdf7c12dc269bd37cfb1e0ee4ff4dc7b68874f68f46e517",
            "genes.tsv": "af0187af0abca1b990884b59f63d9a70cb69e49eb5d185082f6703ee1b019f45",
        },
        folder="finetuning/published/fm-pbmc3k-tiny",
    ),
}
