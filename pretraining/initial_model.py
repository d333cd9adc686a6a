"""Continued pretraining: the checkpoint a run starts from (``--init REF``).

``REF`` is anything `checkpoints.from_pretrained` loads: a folder written by
`zoo.save_pretrained` (a previous run's ``OUT/model`` among them), a catalog name such as
``dna-encoder-tiny``, a Hub repository ``org/name[@revision]``, or a folder in the layout of
a published upstream model (Nucleotide Transformer v1/v2, DNABERT, ESM-2, Geneformer,
scGPT), converted on load. The loaded model keeps its architecture, its tokenizer (a
sequence encoder's ``vocabulary``) and, for expression, its gene vocabulary (``genes.tsv``).

`init_digest` pins what a reference named when the run started: the commit SHA it resolved
to on the Hub, else the SHA-256 of the folder's config, weights and gene vocabulary. The run
records it in its `RunConfig`, so that a resumed run that would start from other weights is
refused like any other changed setting, and `load_initial` refuses weights whose digest no
longer matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import equinox as eqx

from pretraining.sources import sha256_of
from zoo.expression.gene_vocabulary import GENES_FILE, GeneVocabulary

CONFIG_FILE = "config.json"


class InitError(ValueError):
    """The ``--init`` checkpoint cannot start this run."""


@dataclasses.dataclass(frozen=True)
class InitialModel:
    """A loaded ``--init`` checkpoint.

    Attributes:
        model: the zoo model, as loaded (upstream models converted).
        genes: the gene vocabulary the folder carries (``genes.tsv``), or None.
        family: the upstream family it was converted from, or None for a biozoo checkpoint.
        digest: `init_digest` of the reference.
    """

    model: eqx.Module
    genes: GeneVocabulary | None
    family: str | None
    digest: str


def _digest(folder: Path, commit: str | None) -> str:
    if commit:
        return commit
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name in (CONFIG_FILE, GENES_FILE) or path.name.endswith(".safetensors"):
            digest.update(f"{path.name} {sha256_of(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def init_digest(ref: str) -> str:
    """The resolved Hub commit SHA of `ref`, else ``"sha256:<hex>"`` over the SHA-256 of the
    folder's ``config.json``, ``*.safetensors`` and ``genes.tsv`` (downloads a Hub
    checkpoint if it is not cached).

    Raises:
        InitError: naming `ref`, when it resolves to no checkpoint.
    """
    import checkpoints
    from checkpoints.references import resolve

    try:
        folder, provenance = resolve(ref)
    except checkpoints.CheckpointError as error:
        raise InitError(f"--init {ref}: {error}") from None
    return _digest(folder, provenance.commit)


def load_initial(ref: str, digest: str = "") -> InitialModel:
    """Load the checkpoint `ref` names, with its gene vocabulary.

    Args:
        ref: a `checkpoints.from_pretrained` reference.
        digest: the `init_digest` the run recorded ("" checks nothing).

    Raises:
        InitError: naming `ref`, when it does not load, or when its digest is no longer
            `digest` (the checkpoint changed since the run started).
    """
    import checkpoints

    try:
        model, provenance = checkpoints.from_pretrained(ref, with_provenance=True)
        genes = checkpoints.read_genes(provenance.folder)
    except checkpoints.CheckpointError as error:
        raise InitError(f"--init {ref}: {error}") from None
    found = _digest(provenance.folder, provenance.commit)
    if digest and found != digest:
        raise InitError(
            f"--init {ref} now resolves to {found}, but the run started from {digest}; "
            "resume from the same checkpoint, or start a new run in another --out"
        )
    return InitialModel(model, genes, provenance.family, found)
