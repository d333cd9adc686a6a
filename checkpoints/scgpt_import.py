"""Import of scGPT checkpoints (Cui et al., 2024; the whole-human model of
``bowang-lab/scGPT``, folder ``scGPT_human``) as a `zoo.DifferentiableFoundationModel`.

A checkpoint folder holds ``args.json`` (the training arguments), ``vocab.json`` (gene symbol
-> id, with ``<pad>``, ``<cls>`` and ``<eoc>``) and the weights. scGPT publishes its weights
only as ``best_model.pt``, a pickled torch state dict, which is never loaded here: convert it
once, on your own machine with torch installed, to ``model.safetensors`` with the same key
names (`CONVERSION`). Both the flash-attention layout of the whole-human checkpoint
(``self_attn.Wqkv``) and PyTorch's (``self_attn.in_proj_weight``) are accepted.

The model (scGPT's ``TransformerModel`` with continuous value input, post-norm layers and
``cell_emb_style="cls"``): gene embedding and its layer norm, plus the value encoder of the
cell's quantile-binned counts clamped at 512; ``<cls>`` first with value ``pad_value``; no
positions; PyTorch ``TransformerEncoderLayer`` blocks (ReLU, eps 1e-5); the expression
decoder MLP. A masked value is scGPT's ``mask_value`` (-1) through the value encoder, which
the importer computes once as the model's mask vector. The cell embedding is the final
``<cls>`` state (scGPT's ``embed_data`` then divides it by its L2 norm). The classification
and MVC decoders are not part of this model and are
left out; any other tensor is refused.

The tokenizer takes the cell's expressed genes in column order (the vocabulary's gene order,
`read_vocabulary`), up to ``max_seq_len - 1``, and bins the counts per cell
(`zoo.expression.value_binning`). scGPT's ``embed_data`` keeps the user's column order and
samples genes at random when a cell expresses more than that; here the first ones in
vocabulary order are kept. With no positions, the order itself changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from checkpoints import safetensors_format
from checkpoints.errors import CheckpointError
from checkpoints.foundation_weights import foundation_model_from_tensors
from zoo.common.transformer import TransformerConfig
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizerConfig

CONVERSION = (
    'python -c "import torch, safetensors.torch as st; st.save_file({k: v.contiguous() for k, '
    "v in torch.load('best_model.pt', map_location='cpu', weights_only=True).items()}, "
    "'model.safetensors')\""
)
MAX_VALUE = 512.0  # ContinuousValueEncoder's clamp
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every scGPT layer norm
MODULES = {
    "encoder.enc_norm": "gene_norm",
    "value_encoder.linear1": "value_input",
    "value_encoder.linear2": "value_output",
    "value_encoder.norm": "value_norm",
    "decoder.fc.0": "head_hidden",
    "decoder.fc.2": "head_middle",
    "decoder.fc.4": "head_output",
}
LAYER_TENSORS = {
    "self_attn.out_proj": "attention_output",
    "linear1": "mlp_input",
    "linear2": "mlp_output",
    "norm1": "attention_norm",
    "norm2": "mlp_norm",
}
FUSED_QKV = ("self_attn.Wqkv.{}", "self_attn.in_proj_{}")  # flash layout, PyTorch layout
LEFT_OUT = ("cls_decoder.", "mvc_decoder.")
REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "n_bins", "max_seq_len", "pad_value")


class Vocabulary(NamedTuple):
    """An scGPT vocabulary: genes in id order from `first_gene_id`, and the special ids."""

    genes: tuple[str, ...]
    first_gene_id: int
    pad_id: int
    cls_id: int
    other_ids: tuple[int, ...]


def read_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """Read scGPT's ``vocab.json``: gene symbol -> id, and ``<...>`` special tokens.

    Raises:
        CheckpointError: when it is not a str -> int object, lacks ``<pad>`` or ``<cls>``,
            or its gene ids are not consecutive.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in data.values()
    ):
        raise CheckpointError(f"{path}: vocab.json maps gene symbols to integer ids")
    specials = {k: v for k, v in data.items() if k.startswith("<") and k.endswith(">")}
    for required in ("<pad>", "<cls>"):
        if required not in specials:
            raise CheckpointError(f"{path}: vocab.json has no {required}")
    genes = sorted((k for k in data if k not in specials), key=data.__getitem__)
    ids = np.array([data[g] for g in genes])
    first = int(ids[0]) if len(ids) else 0
    if not np.array_equal(ids, first + np.arange(len(genes))):
        raise CheckpointError(f"{path}: gene ids are not consecutive")
    others = tuple(sorted(v for k, v in specials.items() if k not in ("<pad>", "<cls>")))
    return Vocabulary(tuple(genes), first, specials["<pad>"], specials["<cls>"], others)


def scgpt_config(args: dict, vocabulary: Vocabulary) -> DifferentiableFoundationModelConfig:
    """The foundation model config of an scGPT ``args.json`` and vocabulary.

    Raises:
        CheckpointError: naming missing arguments, or settings the model does not
            reproduce (other input embeddings, pre-norm, batch labels, DSBN, explicit
            zero probabilities, a non-cls cell embedding).
    """
    missing = [name for name in REQUIRED_ARGS if name not in args]
    if missing:
        raise CheckpointError(f"args.json lacks {missing}")
    unsupported = {
        "input_emb_style": ("continuous",),
        "pre_norm": (False,),
        "use_batch_labels": (False,),
        "DSBN": (False,),
        "explicit_zero_prob": (False,),
        "cell_emb_style": ("cls",),
    }
    problems = [
        f"{name}={args[name]!r}"
        for name, allowed in unsupported.items()
        if name in args and args[name] not in allowed
    ]
    if problems:
        raise CheckpointError(f"cannot import this scGPT: unsupported {', '.join(problems)}")
    tokenizer = GeneTokenizerConfig(
        n_genes=len(vocabulary.genes),
        max_tokens=min(len(vocabulary.genes), args["max_seq_len"] - 1),
        first_gene_id=vocabulary.first_gene_id,
        pad_id=vocabulary.pad_id,
        cls_id=vocabulary.cls_id,
        mask_id=None,
        ordering="column",
        values="bins",
        n_bins=args["n_bins"],
        unused_ids=vocabulary.other_ids,
    )
    transformer = TransformerConfig(
        dim=args["embsize"],
        n_layers=args["nlayers"],
        n_heads=args["nheads"],
        mlp_dim=args["d_hid"],
        dropout=args.get("dropout", 0.2),
        norm="post",
        activation="relu",
        layer_norm_eps=LAYER_NORM_EPS,
    )
    return DifferentiableFoundationModelConfig(
        tokenizer=tokenizer,
        transformer=transformer,
        pooling="cls",
        max_value=MAX_VALUE,
        cls_value=float(args["pad_value"]),
        gene_norm=True,
        head="expression_mlp",
    )


def converted_tensors(weights: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """The foundation model's flat keys and float32 values from scGPT's state dict.

    Raises:
        CheckpointError: listing missing tensors and tensors the model has no place for.
    """
    taken: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise CheckpointError(f"the scGPT checkpoint has no tensor {name!r}")
        taken.add(name)
        return np.asarray(weights[name], np.float32)

    out = {"gene_embedding.weight": take("encoder.embedding.weight")}
    for theirs, ours in MODULES.items():
        out |= {f"{ours}.{part}": take(f"{theirs}.{part}") for part in ("weight", "bias")}
    for theirs, ours in LAYER_TENSORS.items():
        for part in ("weight", "bias"):
            layers = [
                take(f"transformer_encoder.layers.{i}.{theirs}.{part}") for i in range(n_layers)
            ]
            out[f"stack.layers.{ours}.{part}"] = np.stack(layers)
    for part in ("weight", "bias"):
        fused = []
        for i in range(n_layers):
            names = [f"transformer_encoder.layers.{i}.{form.format(part)}" for form in FUSED_QKV]
            present = [name for name in names if name in weights]
            fused.append(take(present[0] if present else names[0]))
        q, k, v = np.split(np.stack(fused), 3, axis=1)
        for name, tensor in zip(("query", "key", "value"), (q, k, v), strict=True):
            out[f"stack.layers.{name}.{part}"] = tensor
    left = sorted(k for k in set(weights) - taken if not k.startswith(LEFT_OUT))
    if left:
        raise CheckpointError(f"the scGPT checkpoint has tensors the model cannot hold: {left}")
    return out


def encoded_value(tensors: dict[str, np.ndarray], value: float) -> np.ndarray:
    """scGPT's value encoder applied to one value: ``LayerNorm(W2 relu(W1 v + b1) + b2)``."""
    h = np.maximum(tensors["value_input.weight"][:, 0] * value + tensors["value_input.bias"], 0)
    h = tensors["value_output.weight"] @ h + tensors["value_output.bias"]
    centred = h - h.mean()
    normed = centred / np.sqrt((centred**2).mean() + LAYER_NORM_EPS)
    return (normed * tensors["value_norm.weight"] + tensors["value_norm.bias"]).astype(np.float32)


def import_scgpt(folder: str | os.PathLike) -> DifferentiableFoundationModel:
    """Convert an scGPT checkpoint folder (``args.json``, ``vocab.json``,
    ``model.safetensors``) into a `DifferentiableFoundationModel` (see the module
    docstring). Its gene columns are ``read_vocabulary(folder / "vocab.json").genes``; the
    tokenizer does not use medians, which are set to 1.

    Raises:
        CheckpointError: for a missing file, a folder whose weights are only a pickle (with
            the command that converts them), unsupported arguments, or tensors that do not
            fit.
    """
    folder = Path(folder)
    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        pickles = [n for n in ("best_model.pt", "pytorch_model.bin") if (folder / n).is_file()]
        if pickles:
            raise CheckpointError(
                f"{folder} has only {pickles[0]}, a pickle, which is never loaded; convert it "
                f"once where torch is installed, in that folder: {CONVERSION}"
            )
        raise CheckpointError(f"{folder} has no model.safetensors")
    for name in ("args.json", "vocab.json"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} has no {name}")
    vocabulary = read_vocabulary(folder / "vocab.json")
    args = json.loads((folder / "args.json").read_text())
    config = scgpt_config(args, vocabulary)
    try:
        weights, _ = safetensors_format.read(weights_path)
    except safetensors_format.CorruptWeightsError as error:
        raise CheckpointError(str(error)) from None
    tensors = converted_tensors(weights, config.transformer.n_layers)
    tensors["mask_value"] = encoded_value(tensors, float(args.get("mask_value", -1)))
    tensors["tokenizer.gene_medians"] = np.ones(len(vocabulary.genes), np.float32)
    return foundation_model_from_tensors(config, tensors, str(folder))
