"""Export of zoo models to a folder PyTorch ``transformers`` loads with
``AutoModelForMaskedLM``: ``config.json`` + ``model.safetensors`` (+ ``vocab.txt``).

A `zoo.TransformerSequenceEncoder` is written as the stock class its settings match, the
inverse of the importer of that layout:

- post-norm, learned absolute positions, a dense MLP with biases: ``BertForMaskedLM``
  (`checkpoints.bert_import`; DNABERT, imported BERTs, the zoo's own post-norm encoders).
  The token-type table is a single zero row (the import folds BERT's type-0 row into the
  positions), and the masked-LM decoder is tied to the word embeddings. A
  `zoo.DifferentiableFoundationModel` with Geneformer's settings (gene ids in, gene logits
  out, learned positions, post-norm) is a ``BertForMaskedLM`` the same way
  (`checkpoints.geneformer_import`); its tokenizer stays Geneformer's dictionary pickles,
  which an export does not write;
- pre-norm with learned positions or rotary embeddings, a dense GELU MLP with biases:
  ``EsmForMaskedLM`` (`checkpoints.esm_import`; ESM-2, Nucleotide Transformer v1, the zoo's
  own pre-norm encoders with learned positions). ESM numbers absolute positions from
  ``pad_token_id + 1``, so that many unused zero rows go in front of the position table; the
  two agree on right-padded input. ESM's contact-prediction head is not part of the masked
  language model (the importer leaves it out), so ``transformers`` initialises it afresh.

The stacked layer arrays are split back into per-layer tensors, so import, export and import
again gives bit-equal arrays. Nucleotide Transformer v2 (SwiGLU feed-forward without MLP
biases) has no stock ``transformers`` class: upstream ships it as remote code, which biozoo
never writes; it is refused, as is any other setting without an equivalent, by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import equinox as eqx
import numpy as np

from checkpoints import bert_import, esm_import, geneformer_import, safetensors_format
from checkpoints.errors import CheckpointError
from checkpoints.tree_keys import named_leaves
from zoo.common.rotary import BASE
from zoo.common.transformer import TransformerConfig
from zoo.expression.foundation_model import DifferentiableFoundationModel
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig

BERT_ACTIVATIONS = {
    ours: theirs for theirs, ours in bert_import.ACTIVATIONS.items() if theirs != "gelu_new"
}
# Settings each layout fixes: (config path, the value it has). The other settings of the two
# configs are mapped to the layout's config (`MAPPED`) or concern only the tokenizer and
# pooling (`TOKENIZER_AND_POOLING`).
BERT_SETTINGS = {
    "positions": "learned",
    "token_dropout": False,
    "tie_embeddings": True,
    "transformer.norm": "post",
    "transformer.rotary": False,
    "transformer.mlp_bias": True,
}
ESM_SETTINGS = {
    "transformer.norm": "pre",
    "transformer.activation": "gelu",
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
    "transformer.rotary",
    "transformer.feed_forward",  # "dense"; NT v2's "swiglu" is refused on its own
    "positions",
    "token_dropout",
    "tie_embeddings",
    "max_len",
    "vocab_size",
}
TOKENIZER_AND_POOLING = {"alphabet", "kmer", "kmer_stride", "allow_n", "pooling", "vocabulary"}


def export_transformers(model: eqx.Module, out: str | os.PathLike) -> Path:
    """Write `model` as a ``transformers`` masked-LM folder at `out` (created if needed).

    Args:
        model: a `zoo.TransformerSequenceEncoder` with BERT's or ESM's settings, or a
            `zoo.DifferentiableFoundationModel` with Geneformer's.
        out: the folder to write.

    Returns:
        The folder: ``config.json`` (a ``BertConfig`` or ``EsmConfig``),
        ``model.safetensors`` and, when an encoder's tokenizer lists one token per embedding
        row, ``vocab.txt``.

    Raises:
        CheckpointError: for another model class, or naming each setting the layout cannot
            express (NT v2's gated feed-forward among them).
    """
    if isinstance(model, DifferentiableFoundationModel):
        return _write(out, *geneformer_export(model), vocab=[])
    if not isinstance(model, TransformerSequenceEncoder):
        raise CheckpointError(
            f"{type(model).__name__} has no transformers equivalent biozoo exports; "
            "TransformerSequenceEncoder exports as BertForMaskedLM or EsmForMaskedLM, a "
            "Geneformer-style DifferentiableFoundationModel as BertForMaskedLM"
        )
    config = model.config
    bert = config.transformer.norm == "post"
    refuse_unexpressible(config, BERT_SETTINGS if bert else ESM_SETTINGS)
    vocab = _vocabulary(model)
    if bert:
        t = config.transformer
        hf = bert_config(t, max_len=config.max_len, n_tokens=config.n_tokens, pad_id=config.pad_id)
        tensors = bert_tensors(_arrays(model))
    else:
        hf, tensors = esm_config(config, _mask_id(vocab)), esm_tensors(model)
    extras = esm_import.VOCABULARY_EXTRAS.get(getattr(model.tokenizer, "scheme", None), ())
    return _write(out, hf, tensors, vocab=[*vocab, *extras] if vocab else [])


def _write(out: str | os.PathLike, hf: dict, tensors: dict, *, vocab: list[str]) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (if `vocab`) ``vocab.txt``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    safetensors_format.write(folder / "model.safetensors", tensors, {"format": "pt"})
    if vocab:
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    return folder


def geneformer_export(model: DifferentiableFoundationModel) -> tuple[dict, dict]:
    """The ``BertForMaskedLM`` config and tensors of a Geneformer-style foundation model.

    Raises:
        CheckpointError: naming each setting a Geneformer BERT does not have.
    """
    config = model.config
    t = config.transformer
    settings = {
        "value_input": (config.value_input, False),
        "head": (config.head, "gene_logits"),
        "embedding_norm": (config.embedding_norm, True),
        "gene_norm": (config.gene_norm, False),
        "transformer.norm": (t.norm, "post"),
        "transformer.rotary": (t.rotary, False),
        "transformer.feed_forward": (t.feed_forward, "dense"),
        "transformer.mlp_bias": (t.mlp_bias, True),
    }
    problems = [
        f"{k}={v!r} (Geneformer has {want!r})" for k, (v, want) in settings.items() if v != want
    ]
    if config.positions == 0:
        problems.append("positions=0 (Geneformer has a learned position table)")
    if t.activation not in BERT_ACTIVATIONS:
        problems.append(f"transformer.activation={t.activation!r}")
    if problems:
        raise CheckpointError(
            "this foundation model has no BertForMaskedLM equivalent: " + "; ".join(problems)
        )
    renamed = {ours: theirs for theirs, ours in geneformer_import.RENAMED.items()}
    arrays = {renamed.get(k, k): v for k, v in _arrays(model).items()}
    arrays.pop("tokenizer.gene_medians")  # Geneformer's median dictionary, not a weight
    n_tokens = arrays["token_embedding.weight"].shape[0]
    hf = bert_config(t, max_len=config.positions, n_tokens=n_tokens, pad_id=config.tokenizer.pad_id)
    return hf, bert_tensors(arrays)


def refuse_unexpressible(config: TransformerSequenceEncoderConfig, fixed: dict) -> None:
    """Raise `CheckpointError` naming every setting of `config` that differs from the
    layout's `fixed` settings or that no layout maps."""
    settings = _flat_settings(config)
    layout = "BertForMaskedLM" if fixed is BERT_SETTINGS else "EsmForMaskedLM"
    problems = [
        f"{name}={settings[name]!r} ({layout} has {value!r})"
        for name, value in fixed.items()
        if settings[name] != value
    ]
    if fixed is BERT_SETTINGS and settings["transformer.activation"] not in BERT_ACTIVATIONS:
        problems.append(f"transformer.activation={settings['transformer.activation']!r}")
    if fixed is ESM_SETTINGS:
        rotary, positions = settings["transformer.rotary"], settings["positions"]
        if (positions, rotary) not in (("learned", False), ("none", True)):
            problems.append(
                f"positions={positions!r} with transformer.rotary={rotary!r} (EsmForMaskedLM "
                "has learned positions or rotary embeddings, one of the two)"
            )
    if config.transformer.feed_forward == "swiglu":
        problems.append(
            "Nucleotide Transformer v2's gated feed-forward has no stock transformers class "
            "(upstream ships it as remote code, which biozoo never writes)"
        )
    defaults = _flat_settings(TransformerSequenceEncoderConfig())
    known = set(fixed) | MAPPED | TOKENIZER_AND_POOLING
    problems += [
        f"{name}={value!r}"
        for name, value in settings.items()
        if name not in known and value != defaults.get(name)
    ]
    if problems:
        raise CheckpointError(f"this encoder has no {layout} equivalent: " + "; ".join(problems))


def bert_config(t: TransformerConfig, *, max_len: int, n_tokens: int, pad_id: int) -> dict:
    """The ``BertConfig`` dict (for ``BertForMaskedLM``) of a post-norm stack `t` with
    `max_len` learned positions over `n_tokens` tokens."""
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        **_shared_config(t, n_tokens=n_tokens, pad_id=pad_id),
        "hidden_act": BERT_ACTIVATIONS[t.activation],
        "max_position_embeddings": max_len,
        "position_embedding_type": "absolute",
        "type_vocab_size": 1,
        "tie_word_embeddings": True,
    }


def esm_config(config: TransformerSequenceEncoderConfig, mask_id: int) -> dict:
    """The ``EsmConfig`` dict (for ``EsmForMaskedLM``) of an encoder config whose
    vocabulary's mask token is `mask_id`."""
    rotary = config.transformer.rotary
    return {
        "architectures": ["EsmForMaskedLM"],
        "model_type": "esm",
        **_shared_config(config.transformer, n_tokens=config.n_tokens, pad_id=config.pad_id),
        "hidden_act": "gelu",
        "max_position_embeddings": config.max_len + (0 if rotary else config.pad_id + 1),
        "position_embedding_type": "rotary" if rotary else "absolute",
        "emb_layer_norm_before": False,
        "token_dropout": config.token_dropout,
        "mask_token_id": mask_id,
        "tie_word_embeddings": config.tie_embeddings,
        "is_folding_model": False,
    }


def bert_tensors(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``BertForMaskedLM``'s tensors from an encoder's arrays by flat key (the inverse of
    `checkpoints.bert_import.converted_tensors`)."""
    positions = arrays["position_embedding.weight"]
    out = {
        "bert.embeddings.word_embeddings.weight": arrays["token_embedding.weight"],
        "bert.embeddings.position_embeddings.weight": positions,
        "bert.embeddings.token_type_embeddings.weight": np.zeros_like(positions[:1]),
        "bert.embeddings.LayerNorm.weight": arrays["embedding_norm.weight"],
        "bert.embeddings.LayerNorm.bias": arrays["embedding_norm.bias"],
    }
    out |= _layer_tensors(arrays, "bert.encoder.layer", bert_import.LAYER_TENSORS)
    return out | {theirs: arrays[ours] for theirs, ours in bert_import.MLM_HEAD.items()}


def esm_tensors(model: TransformerSequenceEncoder) -> dict[str, np.ndarray]:
    """``EsmForMaskedLM``'s tensors from the encoder's arrays (the inverse of
    `checkpoints.esm_import.converted_tensors`)."""
    arrays = _arrays(model)
    positions = arrays.get("position_embedding.weight")
    if positions is not None:  # ESM's absolute position ids start at pad_id + 1
        unused = np.zeros((model.config.pad_id + 1, positions.shape[1]), positions.dtype)
        arrays["position_embedding.weight"] = np.concatenate([unused, positions])
    out = {theirs: arrays[ours] for theirs, ours in esm_import.TENSORS.items() if ours in arrays}
    t = model.config.transformer
    if t.rotary:  # transformers' buffer: 1 / BASE ** (2i / head_dim), in float32
        head_dim = t.dim // t.n_heads
        exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
        inverse = np.float32(1.0) / np.float32(BASE) ** exponents
        out["esm.rotary_embeddings.inv_freq"] = inverse.astype(np.float32)
    layers = _layer_tensors(arrays, esm_import.LAYER_PREFIX, esm_import.LAYER_TENSORS)
    return out | layers


def _shared_config(t: TransformerConfig, *, n_tokens: int, pad_id: int) -> dict:
    return {
        "vocab_size": n_tokens,
        "hidden_size": t.dim,
        "num_hidden_layers": t.n_layers,
        "num_attention_heads": t.n_heads,
        "intermediate_size": t.mlp_dim,
        "hidden_dropout_prob": t.dropout,
        "attention_probs_dropout_prob": t.dropout,
        "layer_norm_eps": t.layer_norm_eps,
        "pad_token_id": pad_id,
    }


def _arrays(model: eqx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in named_leaves(model, eqx.is_array).items()}


def _layer_tensors(
    arrays: dict[str, np.ndarray], prefix: str, names: dict[str, str]
) -> dict[str, np.ndarray]:
    """Per-layer tensors ``<prefix>.<i>.<name>.<part>`` from the stacked arrays."""
    out = {}
    for theirs, ours in names.items():
        for part in ("weight", "bias"):
            for i, layer in enumerate(arrays[f"stack.layers.{ours}.{part}"]):
                out[f"{prefix}.{i}.{theirs}.{part}"] = np.ascontiguousarray(layer)
    return out


def _vocabulary(model: TransformerSequenceEncoder) -> list[str]:
    """The model's tokens in id order, when its tokenizer lists one per embedding row."""
    vocab = list(getattr(model.tokenizer, "vocab", ()))
    return vocab if len(vocab) == model.config.n_tokens else []


def _mask_id(vocab: list[str]) -> int | None:
    """The id of the vocabulary's mask token (``<mask>`` or ``[MASK]``), if it has one."""
    for token in ("<mask>", "[MASK]"):
        if token in vocab:
            return vocab.index(token)
    return None


def _flat_settings(config: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out |= _flat_settings(value, f"{prefix}{field.name}.")
        else:
            out[prefix + field.name] = value
    return out
