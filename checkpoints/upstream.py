"""The field's published models that biozoo loads in their own (upstream) layout.

`FAMILIES` lists each supported family with the Hub ids users type and its licence.
`detect_family` recognises a folder's family from its files alone: the JSON of
``config.json`` (``model_type``, and flags such as ``add_bias_fnn``) or of ``args.json``, the
lines of ``vocab.txt``, and the presence of ``vocab.json`` or of Geneformer's dictionaries.
Nothing in the folder is run or imported: the architecture is always ours, and the family's
converter (`checkpoints.bert_import`, ...) reads only JSON, text and a single
``model.safetensors`` (and Geneformer's dictionary pickles, through the restricted
plain-data unpickler of `checkpoints.restricted_pickle`).

Weights must be safetensors. A folder or repository whose weights are only a PyTorch pickle
(``pytorch_model.bin``, ``best_model.pt``) is refused with what to do instead: load a
revision that has ``model.safetensors`` (the Hub's safetensors conversion bot opens one as a
pull request, loadable as ``org/name@refs/pr/N``), or convert the folder on your own
machine with ``biozoo convert-bin FOLDER`` (`checkpoints.convert_bin`, which needs torch).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

import equinox as eqx

from checkpoints.bert_import import dnabert_kmer, import_bert
from checkpoints.errors import CheckpointError
from checkpoints.esm_import import esm_variant, import_esm
from checkpoints.geneformer_import import (
    DICTIONARIES,
    find_geneformer_dictionaries,
    import_geneformer,
    read_token_dictionary,
)
from checkpoints.scgpt_import import import_scgpt

CONFIG_FILES = ("config.json", "args.json")
# What the converters read inside the model folder (never code, pickles or other weights).
MODEL_FILES = [
    *CONFIG_FILES,
    "vocab.txt",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
]
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@dataclasses.dataclass(frozen=True)
class UpstreamFamily:
    """A published model family and how biozoo converts it.

    Attributes:
        title: the family's name as its authors write it.
        hub_ids: Hub references users type (``org/name`` or ``org/name/folder``).
        licence: the weights' licence.
        licence_source: where that licence is stated.
        load: converts a folder in the family's layout into the zoo model, which carries
            the checkpoint's own tokenizer.
        note: what a user should know to load them (where the weights are only a pickle).
    """

    title: str
    hub_ids: tuple[str, ...]
    licence: str
    licence_source: str
    load: Callable[[Path], eqx.Module]
    note: str = ""


def load_geneformer(folder: Path) -> eqx.Module:
    """Convert a Geneformer model folder with the dictionaries of its repository (the
    folder's own ``geneformer/`` or its parent's, as in ``ctheodoris/Geneformer``) whose
    token count matches the model's vocabulary."""
    root, version = geneformer_dictionaries(folder)
    token_dictionary, gene_medians = find_geneformer_dictionaries(root, version)
    return import_geneformer(
        folder, token_dictionary=token_dictionary, gene_medians=gene_medians, version=version
    )


def nucleotide_transformer(version: str, names: tuple[str, ...], note: str) -> UpstreamFamily:
    """The Nucleotide Transformer `version` family of repositories
    ``InstaDeepAI/nucleotide-transformer-<name>``, CC BY-NC-SA 4.0."""
    return UpstreamFamily(
        title=f"Nucleotide Transformer {version}",
        hub_ids=tuple(f"InstaDeepAI/nucleotide-transformer-{name}" for name in names),
        licence="CC BY-NC-SA 4.0 (non-commercial, share-alike)",
        licence_source="the InstaDeepAI/nucleotide-transformer model cards and repository",
        load=import_esm,
        note=note,
    )


CONVERT = "download the folder yourself (hf download), then biozoo convert-bin FOLDER"
GENEFORMER_LICENCE_SOURCE = "the ctheodoris/Geneformer model card (license: apache-2.0)"
ESM2_MODELS = ("t6_8M", "t12_35M", "t30_150M", "t33_650M", "t36_3B", "t48_15B")
FAMILIES: dict[str, UpstreamFamily] = {
    "geneformer-v1": UpstreamFamily(
        title="Geneformer V1",
        hub_ids=("ctheodoris/Geneformer/Geneformer-V1-10M",),
        licence="Apache-2.0",
        licence_source=GENEFORMER_LICENCE_SOURCE,
        load=load_geneformer,
    ),
    "geneformer-v2": UpstreamFamily(
        title="Geneformer V2",
        hub_ids=(
            "ctheodoris/Geneformer",
            "ctheodoris/Geneformer/Geneformer-V2-104M",
            "ctheodoris/Geneformer/Geneformer-V2-316M",
        ),
        licence="Apache-2.0",
        licence_source=GENEFORMER_LICENCE_SOURCE,
        load=load_geneformer,
        note="the repository's root model is V2-316M",
    ),
    "nt-v1": nucleotide_transformer(
        "v1",
        ("500m-human-ref", "500m-1000g", "2.5b-1000g", "2.5b-multi-species"),
        note="no model.safetensors on main when last checked: load a refs/pr/N conversion, "
        "or " + CONVERT,
    ),
    "nt-v2": nucleotide_transformer(
        "v2",
        tuple(f"v2-{size}-multi-species" for size in ("50m", "100m", "250m", "500m")),
        note="v2-250m has model.safetensors only on refs/pr/2",
    ),
    "dnabert": UpstreamFamily(
        title="DNABERT (k = 3, 4, 5, 6)",
        hub_ids=tuple(f"zhihan1996/DNA_bert_{k}" for k in (3, 4, 5, 6)),
        licence="see upstream",
        licence_source="the LICENSE file in each zhihan1996/DNA_bert_k repository",
        load=import_bert,
        note="weights only as pytorch_model.bin: " + CONVERT,
    ),
    "scgpt": UpstreamFamily(
        title="scGPT whole-human",
        hub_ids=("u-cellm/scGPT-whole-human",),
        licence="MIT",
        licence_source="the LICENSE file of github.com/bowang-lab/scGPT",
        load=import_scgpt,
        note="a mirror of the authors' Google Drive folder, weights only as best_model.pt: "
        + CONVERT,
    ),
    "esm2": UpstreamFamily(
        title="ESM-2",
        hub_ids=tuple(f"facebook/esm2_{name}_UR50D" for name in ESM2_MODELS),
        licence="MIT",
        licence_source="the facebook/esm2_* model cards (license: mit)",
        load=import_esm,
    ),
    "bert": UpstreamFamily(
        title="BERT masked-language models (other BertForMaskedLM / BertModel folders)",
        hub_ids=(),
        licence="see upstream",
        licence_source="the model card of the repository loaded",
        load=import_bert,
    ),
}


def is_upstream_layout(folder: Path) -> bool:
    """Whether `folder` holds an upstream config (a ``config.json`` that is not a biozoo
    checkpoint's, or an ``args.json`` without one) rather than a biozoo checkpoint."""
    config = folder / "config.json"
    if not config.is_file():
        return (folder / "args.json").is_file()
    try:
        data = json.loads(config.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # the biozoo reader reports it
    return isinstance(data, dict) and "format_version" not in data


def hub_patterns(prefix: str) -> list[str]:
    """The repository paths a Hub download of an upstream model in folder `prefix` (``""``
    or ``"sub/folder/"``) fetches: its `MODEL_FILES`, and Geneformer's token and gene median
    dictionaries at the repository root (read with the restricted unpickler only)."""
    dictionaries = [path for pair in DICTIONARIES.values() for path in pair]
    return [prefix + name for name in MODEL_FILES] + dictionaries


def has_safetensors(folder: Path) -> bool:
    """Whether `folder` holds its weights as ``model.safetensors`` (the converters read one
    unsharded file)."""
    return (folder / "model.safetensors").is_file()


def refuse_pickle_weights(where: str, names: list[str]) -> None:
    """Raise the one-line error for a model `where` whose files `names` hold no
    safetensors weights, naming its pickle weights and what to do instead."""
    pickles = sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in PICKLE_WEIGHTS))
    found = f", only {', '.join(pickles)} (a pickle, which biozoo never loads)" if pickles else ""
    raise CheckpointError(
        f"{where} has no model.safetensors{found}: load a revision that has one (the Hub's "
        "safetensors conversion opens it as a pull request: org/name@refs/pr/N), or convert "
        "the folder on your own machine with `biozoo convert-bin FOLDER` (needs torch)"
    )


def detect_family(folder: Path) -> str:
    """The key in `FAMILIES` of the upstream model in `folder`, from its files alone:
    ``args.json`` + ``vocab.json`` is scGPT; a ``config.json`` is classified by
    `checkpoints.esm_import.esm_variant` (ESM-2, NT v1, NT v2); a BERT is DNABERT when its
    ``vocab.txt`` is a k-mer vocabulary, Geneformer when it has no ``vocab.txt`` and sits
    in a Geneformer repository (`geneformer_root`), and any other BERT otherwise.

    Raises:
        CheckpointError: naming what the folder holds when no supported family matches.
    """
    if not (folder / "config.json").is_file():
        if (folder / "vocab.json").is_file():
            return "scgpt"
        raise CheckpointError(f"{folder} has args.json but no vocab.json, as scGPT folders have")
    config = read_json_object(folder / "config.json")
    variant = esm_variant(config)
    if variant in ("esm2", "nt-v1", "nt-v2"):
        return variant
    vocab = folder / "vocab.txt"
    if config.get("model_type") == "bert":
        if vocab.is_file() and dnabert_kmer(vocab.read_text().splitlines()) is not None:
            return "dnabert"
        if not vocab.is_file() and geneformer_root(folder) is not None:
            return "geneformer-" + geneformer_dictionaries(folder)[1].lower()
        return "bert"
    raise CheckpointError(
        f"{folder} is not in a layout biozoo converts (model_type "
        f"{config.get('model_type')!r}, vocab_size {config.get('vocab_size')!r}); supported "
        f"upstream families: {', '.join(f.title for f in FAMILIES.values())}"
    )


def geneformer_root(folder: Path) -> Path | None:
    """The Geneformer repository around a model folder: the folder itself or its parent,
    whichever holds the ``geneformer/`` package folder with the dictionaries."""
    for candidate in (folder, folder.parent):
        if (candidate / "geneformer").is_dir():
            return candidate
    return None


def geneformer_dictionaries(folder: Path) -> tuple[Path, str]:
    """The Geneformer repository root of a model folder and the version (``"V1"`` or
    ``"V2"``) whose token dictionary has as many tokens as the model's ``vocab_size``.

    Raises:
        CheckpointError: when no dictionary of the repository fits the model.
    """
    root = geneformer_root(folder)
    vocab_size = read_json_object(folder / "config.json").get("vocab_size")
    found = []
    for version, (token_path, _) in DICTIONARIES.items():
        if root is not None and (root / token_path).is_file():
            tokens = read_token_dictionary(root / token_path)
            size = tokens.first_gene_id + len(tokens.genes)
            found.append(f"{token_path} ({size} tokens)")
            if size == vocab_size:
                return root, version
    raise CheckpointError(
        f"no Geneformer token dictionary beside {folder} has the model's {vocab_size} tokens "
        f"(found: {', '.join(found) or 'none'})"
    )


def load_upstream(folder: Path, family: str) -> eqx.Module:
    """Convert the upstream model of `family` in `folder` into the zoo model."""
    return FAMILIES[family].load(folder)


def read_json_object(path: Path) -> dict:
    """The JSON object in the file `path`.

    Raises:
        CheckpointError: when the file is not valid JSON or not an object.
    """
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
