"""Export of zoo models to a folder PyTorch ``transformers`` loads with
``AutoModelForMaskedLM``: ``config.json`` + ``model.safetensors`` (+ ``vocab.txt``).

A `zoo.TransformerSequenceEncoder` whose settings BERT expresses (post-norm blocks, learned
absolute positions, a dense MLP with biases, no rotary embeddings) becomes a
``BertForMaskedLM``: the inverse of `checkpoints.bert_import`. The stacked layer arrays are
split back into ``bert.encoder.layer.<i>.*`` tensors, the masked-LM head becomes
``cls.predictions`` with its decoder tied to the word embeddings, and the token-type table is
a single zero row (the import folds BERT's type-0 row into the positions), so import, export
and import again gives bit-equal arrays. A model with a setting BERT has no equivalent for is
refused, naming the setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import equinox as eqx
import numpy as np

from checkpoints import safetensors_format
from checkpoints.bert_import import ACTIVATIONS, LAYER_TENSORS, MLM_HEAD
from checkpoints.errors import CheckpointError
from checkpoints.tree_keys import named_leaves
from zoo.common.transformer import TransformerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig

BERT_ACTIVATIONS = {ours: theirs for theirs, ours in ACTIVATIONS.items() if theirs != "gelu_new"}
# Settings BERT fixes: (config path, the value BERT has). Other settings of the two configs
# are either mapped to BERT's config below or only concern the tokenizer and pooling.
BERT_SETTINGS = {
    "positions": "learned",
    "token_dropout": False,
    "tie_embeddings": True,
    "transformer.norm": "post",
    "transformer.rotary": False,
    "transformer.feed_forward": "dense",
    "transformer.mlp_bias": True,
}
MAPPED = {
    "transformer.dim",
    "transformer.n_layers",
    "transformer.n_heads",
    "transformer.mlp_dim",
    "transformer.dropout",
    "transformer.activation",
    "transformer.layer_norm_eps",
    "max_len",
    "vocab_size",
}
TOKENIZER_AND_POOLING = {"alphabet", "kmer", "kmer_stride", "allow_n", "pooling", "vocabulary"}


def export_transformers(model: eqx.Module, out: str | os.PathLike) -> Path:
    """Write `model` as a ``transformers`` masked-LM folder at `out` (created if needed).

    Args:
        model: a `zoo.TransformerSequenceEncoder` with BERT's settings.
        out: the folder to write.

    Returns:
        The folder: ``config.json`` (a ``BertConfig``), ``model.safetensors`` and, when the
        model's tokenizer lists one token per embedding row, ``vocab.txt``.

    Raises:
        CheckpointError: for another model class, or naming each setting BERT cannot express.
    """
    if not isinstance(model, TransformerSequenceEncoder):
        raise CheckpointError(
            f"{type(model).__name__} has no transformers equivalent biozoo exports; "
            "TransformerSequenceEncoder exports as BertForMaskedLM"
        )
    config = model.config
    refuse_unexpressible(config)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocabulary(model)
    bert = bert_config(config, pad_token_id=vocab.index("[PAD]") if "[PAD]" in vocab else 0)
    (folder / "config.json").write_text(json.dumps(bert, indent=2) + "\n")
    safetensors_format.write(folder / "model.safetensors", bert_tensors(model), {"format": "pt"})
    if vocab:
        (folder / "vocab.txt").write_text("".join(token + "\n" for token in vocab))
    return folder


def refuse_unexpressible(config: TransformerSequenceEncoderConfig) -> None:
    """Raise `CheckpointError` naming every setting of `config` a BERT cannot have."""
    settings = _flat_settings(config)
    defaults = _flat_settings(
        TransformerSequenceEncoderConfig(transformer=TransformerConfig(norm="post"))
    )
    problems = [
        f"{name}={settings[name]!r} (BERT has {value!r})"
        for name, value in BERT_SETTINGS.items()
        if name in settings and settings[name] != value
    ]
    if settings["transformer.activation"] not in BERT_ACTIVATIONS:
        problems.append(f"transformer.activation={settings['transformer.activation']!r}")
    known = set(BERT_SETTINGS) | MAPPED | TOKENIZER_AND_POOLING
    problems += [
        f"{name}={value!r}"
        for name, value in settings.items()
        if name not in known and value != defaults.get(name)
    ]
    if problems:
        raise CheckpointError(
            "this encoder has no BertForMaskedLM equivalent: " + "; ".join(problems)
        )


def bert_config(config: TransformerSequenceEncoderConfig, *, pad_token_id: int) -> dict:
    """The ``BertConfig`` dict (for ``BertForMaskedLM``) of an encoder config."""
    t = config.transformer
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": config.n_tokens,
        "hidden_size": t.dim,
        "num_hidden_layers": t.n_layers,
        "num_attention_heads": t.n_heads,
        "intermediate_size": t.mlp_dim,
        "hidden_act": BERT_ACTIVATIONS[t.activation],
        "hidden_dropout_prob": t.dropout,
        "attention_probs_dropout_prob": t.dropout,
        "layer_norm_eps": t.layer_norm_eps,
        "max_position_embeddings": config.max_len,
        "position_embedding_type": "absolute",
        "type_vocab_size": 1,
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": True,
    }


def bert_tensors(model: TransformerSequenceEncoder) -> dict[str, np.ndarray]:
    """``BertForMaskedLM``'s tensors from the encoder's arrays (the inverse of
    `checkpoints.bert_import.converted_tensors`)."""
    arrays = {k: np.asarray(v) for k, v in named_leaves(model, eqx.is_array).items()}
    dim = model.config.transformer.dim
    out = {
        "bert.embeddings.word_embeddings.weight": arrays["token_embedding.weight"],
        "bert.embeddings.position_embeddings.weight": arrays["position_embedding.weight"],
        "bert.embeddings.token_type_embeddings.weight": np.zeros(
            (1, dim), arrays["position_embedding.weight"].dtype
        ),
        "bert.embeddings.LayerNorm.weight": arrays["embedding_norm.weight"],
        "bert.embeddings.LayerNorm.bias": arrays["embedding_norm.bias"],
    }
    for bert_name, ours in LAYER_TENSORS.items():
        for part in ("weight", "bias"):
            stacked = arrays[f"stack.layers.{ours}.{part}"]
            for i, layer in enumerate(stacked):
                out[f"bert.encoder.layer.{i}.{bert_name}.{part}"] = layer
    out |= {theirs: arrays[ours] for theirs, ours in MLM_HEAD.items()}
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _vocabulary(model: TransformerSequenceEncoder) -> list[str]:
    """The model's tokens in id order, when its tokenizer lists one per embedding row."""
    vocab = list(getattr(model.tokenizer, "vocab", ()))
    return vocab if len(vocab) == model.config.n_tokens else []


def _flat_settings(config: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out |= _flat_settings(value, f"{prefix}{field.name}.")
        else:
            out[prefix + field.name] = value
    return out
