"""The field's published models that biozoo loads in their own (upstream) layout.

`FAMILIES` lists each supported family with the Hub ids users type and its licence.
`detect_family` recognises a folder's family from its files alone: the JSON of
``config.json`` (``model_type``, and flags such as ``add_bias_fnn``) or of ``args.json``, the
lines of ``vocab.txt``, and the presence of ``vocab.json`` or of Geneformer's dictionaries.
Nothing in the folder is run or imported: the architecture is always ours, and the family's
converter (`checkpoints.bert_import`, ...) reads only JSON, text and safetensors.

Weights must be safetensors. A folder or repository whose weights are only a PyTorch pickle
(``pytorch_model.bin``, ``best_model.pt``) is refused with what to do instead: load a
revision that has ``model.safetensors`` (the Hub's safetensors conversion bot opens one as a
pull request, loadable as ``org/name@refs/pr/N``), or convert the folder on your own
machine with ``biozoo convert-bin FOLDER`` (`checkpoints.convert_bin`, which needs torch).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import equinox as eqx

from checkpoints.bert_import import import_bert
from checkpoints.errors import CheckpointError

CONFIG_FILES = ("config.json", "args.json")
# What the converters read inside the model folder (never code, pickles or other weights).
MODEL_FILES = [
    *CONFIG_FILES,
    "vocab.txt",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
NUCLEOTIDES = "ATCG"


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
    """

    title: str
    hub_ids: tuple[str, ...]
    licence: str
    licence_source: str
    load: Callable[[Path], eqx.Module]


FAMILIES: dict[str, UpstreamFamily] = {
    "dnabert": UpstreamFamily(
        title="DNABERT (k = 3, 4, 5, 6)",
        hub_ids=tuple(f"zhihan1996/DNA_bert_{k}" for k in (3, 4, 5, 6)),
        licence="see upstream",
        licence_source="the LICENSE file in each zhihan1996/DNA_bert_k repository",
        load=import_bert,
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
    or ``"sub/folder/"``) fetches."""
    return [prefix + name for name in MODEL_FILES]


def has_safetensors(folder: Path) -> bool:
    """Whether `folder` holds its weights as safetensors."""
    return any((folder / name).is_file() for name in SAFETENSORS_FILES)


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
    """The key in `FAMILIES` of the upstream model in `folder`, from its files alone.

    Raises:
        CheckpointError: naming what the folder holds when no supported family matches.
    """
    config = read_json_object(folder / "config.json") if (folder / "config.json").is_file() else {}
    model_type = config.get("model_type")
    if model_type == "bert":
        vocab = read_vocab(folder)
        return "dnabert" if vocab is not None and kmer_size(vocab) is not None else "bert"
    described = f"model_type {model_type!r}" if config else "no config.json"
    raise CheckpointError(
        f"{folder} is not in a layout biozoo converts ({described}); supported upstream "
        f"families: {', '.join(f.title for f in FAMILIES.values())}"
    )


def read_vocab(folder: Path) -> list[str] | None:
    """The tokens of ``vocab.txt``, one a line, or None without one."""
    path = folder / "vocab.txt"
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()


def kmer_size(vocab: list[str]) -> int | None:
    """k when the vocabulary's non-special tokens are exactly the 4^k nucleotide k-mers
    (DNABERT's layout), else None."""
    tokens = [t for t in vocab if not (t.startswith("[") and t.endswith("]"))]
    k = len(tokens[0]) if tokens else 0
    kmers = {"".join(p) for p in itertools.product(NUCLEOTIDES, repeat=k)} if k <= 8 else set()
    return k if k and set(tokens) == kmers and len(tokens) == len(kmers) else None


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
