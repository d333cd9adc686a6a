"""Import of Geneformer checkpoints (Theodoris et al., 2023; ``ctheodoris/Geneformer`` on the
Hugging Face Hub) as a `zoo.DifferentiableFoundationModel`.

A Geneformer model folder holds a ``BertForMaskedLM`` (``config.json`` +
``model.safetensors``); its tokenizer lives in two dictionary pickles of the Geneformer
repository, read with the restricted unpickler (`checkpoints.restricted_pickle`):

- the token dictionary, ``{"<pad>": 0, "<mask>": 1, [V2: "<cls>": 2, "<eos>": 3,]
  Ensembl ID: numpy.int16 id, ...}``, gene ids consecutive from the first free id;
- the gene median dictionary, ``{Ensembl ID: numpy.float64 non-zero median}``.

The model's gene columns are the dictionary's genes in id order (`read_token_dictionary`
gives them, to align a count matrix). V1 (no ``<cls>``/``<eos>`` in the dictionary) puts up
to ``max_position_embeddings`` (2048) genes in a sequence; V2 frames up to
``max_position_embeddings - 2`` (4094) genes with ``<cls>`` and ``<eos>``. The BERT tensors
map as in `checkpoints.bert_import` (token-type row 0 folded into the position table); the
masked-LM head keeps its decoder tied to the gene embedding. The cell embedding is the mean
of the genes' final states (``<cls>`` and ``<eos>`` left out), which is the cell mode of
Geneformer's ``EmbExtractor`` taken at the last layer (``emb_layer=0``; its default takes the
layer before last). Dropout is as published; use `equinox.nn.inference_mode` for inference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from checkpoints import safetensors_format
from checkpoints.bert_import import bert_config, converted_tensors
from checkpoints.errors import CheckpointError
from checkpoints.foundation_weights import foundation_model_from_tensors
from checkpoints.restricted_pickle import load_plain_data
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizerConfig

TARGET_SUM = 10_000.0  # Geneformer's TranscriptomeTokenizer default
# Flat keys of `bert_import.converted_tensors` that are named differently in the foundation model.
RENAMED = {
    "token_embedding.weight": "gene_embedding.weight",
    "mlm_dense.weight": "head_hidden.weight",
    "mlm_dense.bias": "head_hidden.bias",
    "mlm_norm.weight": "head_norm.weight",
    "mlm_norm.bias": "head_norm.bias",
    "mlm_bias": "head_bias",
}
# (token dictionary, gene median dictionary) of each version in the current upstream layout.
DICTIONARIES = {
    "V1": (
        "geneformer/gene_dictionaries_30m/token_dictionary_gc30M.pkl",
        "geneformer/gene_dictionaries_30m/gene_median_dictionary_gc30M.pkl",
    ),
    "V2": (
        "geneformer/token_dictionary_gc104M.pkl",
        "geneformer/gene_median_dictionary_gc104M.pkl",
    ),
}
# The same files under their earlier names: V2's *_gc104M files are renames of the *_gc95M
# ones of 2024 to mid-2025; V1's lay in the package folder until they moved to
# gene_dictionaries_30m/.
EARLIER_DICTIONARIES = {
    "V1": ("geneformer/token_dictionary.pkl", "geneformer/gene_median_dictionary.pkl"),
    "V2": ("geneformer/token_dictionary_gc95M.pkl", "geneformer/gene_median_dictionary_gc95M.pkl"),
}


class GeneformerDictionaries(NamedTuple):
    """Paths of a Geneformer version's token and gene median dictionaries."""

    token_dictionary: Path
    gene_medians: Path


class TokenDictionary(NamedTuple):
    """A Geneformer token dictionary: the genes in id order from `first_gene_id`, and the
    special token ids (None where the dictionary has no such token)."""

    genes: tuple[str, ...]
    first_gene_id: int
    pad_id: int
    mask_id: int
    cls_id: int | None
    eos_id: int | None

    @property
    def version(self) -> str:
        """``"V2"`` when the dictionary has ``<cls>`` and ``<eos>``, else ``"V1"``."""
        return "V2" if self.cls_id is not None else "V1"


def find_geneformer_dictionaries(
    repo_root: str | os.PathLike, version: str
) -> GeneformerDictionaries:
    """The dictionary pickles of `version` (``"V1"`` or ``"V2"``) in a checkout of the
    Geneformer repository laid out as upstream publishes it: V2's
    ``geneformer/token_dictionary_gc104M.pkl`` and ``gene_median_dictionary_gc104M.pkl``
    (or their earlier ``*_gc95M.pkl`` names), V1's under
    ``geneformer/gene_dictionaries_30m/`` (or the earlier ``geneformer/token_dictionary.pkl``
    and ``gene_median_dictionary.pkl``).

    Raises:
        CheckpointError: for an unknown version, or naming the paths tried when no layout
            has both files.
    """
    if version not in DICTIONARIES:
        raise CheckpointError(f"Geneformer version must be one of {sorted(DICTIONARIES)}")
    root = Path(repo_root)
    layouts = (DICTIONARIES[version], EARLIER_DICTIONARIES[version])
    for names in layouts:
        paths = GeneformerDictionaries(*(root / name for name in names))
        if all(path.is_file() for path in paths):
            return paths
    tried = [str(root / name) for names in layouts for name in names]
    raise CheckpointError(f"Geneformer {version} dictionaries not found; tried {tried}")


def read_token_dictionary(path: str | os.PathLike) -> TokenDictionary:
    """Read a Geneformer token dictionary pickle (restricted unpickler).

    Raises:
        CheckpointError: when it is not a str -> int dict with ``<pad>`` and ``<mask>``,
            has only one of ``<cls>``/``<eos>``, or its gene ids are not consecutive from
            the first id after the special tokens.
    """
    data = load_plain_data(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | np.integer) for k, v in data.items()
    ):
        raise CheckpointError(f"{path}: a token dictionary maps strings to integer ids")
    specials = {k: int(v) for k, v in data.items() if k.startswith("<")}
    for required in ("<pad>", "<mask>"):
        if required not in specials:
            raise CheckpointError(f"{path}: the token dictionary has no {required}")
    if ("<cls>" in specials) != ("<eos>" in specials):
        raise CheckpointError(f"{path}: the token dictionary has only one of <cls> and <eos>")
    genes = sorted((k for k in data if not k.startswith("<")), key=lambda k: int(data[k]))
    ids = np.array([int(data[g]) for g in genes])
    first = max(specials.values()) + 1
    if not np.array_equal(ids, first + np.arange(len(genes))):
        raise CheckpointError(f"{path}: gene ids are not consecutive from {first}")
    return TokenDictionary(
        genes=tuple(genes),
        first_gene_id=first,
        pad_id=specials["<pad>"],
        mask_id=specials["<mask>"],
        cls_id=specials.get("<cls>"),
        eos_id=specials.get("<eos>"),
    )


def read_gene_medians(path: str | os.PathLike, genes: tuple[str, ...]) -> np.ndarray:
    """The medians of `genes`, in order, from a Geneformer gene median dictionary pickle.

    Raises:
        CheckpointError: when it is not a str -> number dict, lacks a gene (naming a few),
            or a median is not finite and positive.
    """
    data = load_plain_data(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a gene median dictionary is a dict")
    missing = [g for g in genes if g not in data]
    if missing:
        raise CheckpointError(
            f"{path}: no median for {len(missing)} genes of the token dictionary, "
            f"e.g. {missing[:3]}"
        )
    medians = np.array([data[g] for g in genes], np.float64)
    if not np.all(np.isfinite(medians) & (medians > 0)):
        raise CheckpointError(f"{path}: gene medians must be finite and positive")
    return medians


def geneformer_config(hf: dict, vocabulary: TokenDictionary) -> DifferentiableFoundationModelConfig:
    """The foundation model config of a Geneformer ``config.json`` and token dictionary.

    Raises:
        CheckpointError: for a config the model cannot reproduce (see
            `checkpoints.bert_import.bert_config`), or whose ``vocab_size`` differs from the
            dictionary's.
    """
    bert = bert_config(hf)
    vocab_size = vocabulary.first_gene_id + len(vocabulary.genes)
    if hf["vocab_size"] != vocab_size:
        raise CheckpointError(
            f"config vocab_size {hf['vocab_size']} differs from the token dictionary's "
            f"{vocab_size} ({vocabulary.version})"
        )
    framing = 2 if vocabulary.cls_id is not None else 0
    tokenizer = GeneTokenizerConfig(
        n_genes=len(vocabulary.genes),
        max_tokens=min(len(vocabulary.genes), hf["max_position_embeddings"] - framing),
        target_sum=TARGET_SUM,
        first_gene_id=vocabulary.first_gene_id,
        pad_id=vocabulary.pad_id,
        cls_id=vocabulary.cls_id,
        mask_id=vocabulary.mask_id,
        eos_id=vocabulary.eos_id,
    )
    return DifferentiableFoundationModelConfig(
        tokenizer=tokenizer,
        transformer=bert.transformer,
        pooling="mean",
        value_input=False,
        positions=hf["max_position_embeddings"],
        embedding_norm=True,
        head="gene_logits",
    )


def import_geneformer(
    model_folder: str | os.PathLike,
    *,
    token_dictionary: str | os.PathLike,
    gene_medians: str | os.PathLike,
    version: str | None = None,
) -> DifferentiableFoundationModel:
    """Convert a Geneformer model folder and its dictionaries into a
    `DifferentiableFoundationModel` (see the module docstring).

    Args:
        model_folder: holds ``config.json`` and ``model.safetensors``.
        token_dictionary, gene_medians: the dictionary pickles of the model's version
            (`find_geneformer_dictionaries` locates them in a Geneformer checkout).
        version: ``"V1"`` or ``"V2"`` to check the dictionary against; None takes the
            dictionary's (V2 when it has ``<cls>`` and ``<eos>``).

    Returns:
        The model; its gene columns are ``read_token_dictionary(token_dictionary).genes``.

    Raises:
        CheckpointError: for a missing file, a weights file that is only a pickle, a
            dictionary of the other version, an unsupported config, or tensors that do not
            fit.
    """
    folder = Path(model_folder)
    vocabulary = read_token_dictionary(token_dictionary)
    if version is not None and version != vocabulary.version:
        raise CheckpointError(
            f"{token_dictionary} is a Geneformer {vocabulary.version} token dictionary, "
            f"not {version}"
        )
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(
            f"{folder} has no model.safetensors; Geneformer publishes one for every model "
            "(pytorch_model.bin is a pickle and is never loaded)"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    config = geneformer_config(json.loads(config_path.read_text()), vocabulary)
    try:
        weights, _ = safetensors_format.read(folder / "model.safetensors")
    except safetensors_format.CorruptWeightsError as error:
        raise CheckpointError(str(error)) from None
    tensors = converted_tensors(weights, config.transformer.n_layers)
    if "mlm_bias" not in tensors:
        raise CheckpointError(f"{folder}: the checkpoint has no masked-LM head (cls.predictions)")
    tensors = {RENAMED.get(k, k): v for k, v in tensors.items()}
    tensors["tokenizer.gene_medians"] = read_gene_medians(gene_medians, vocabulary.genes)
    return foundation_model_from_tensors(config, tensors, str(folder))
