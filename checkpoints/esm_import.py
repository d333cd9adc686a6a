"""Import of ESM-layout checkpoints (``config.json`` + ``model.safetensors`` + ``vocab.txt``)
as a `zoo.TransformerSequenceEncoder`: Nucleotide Transformer v1 and v2 (Dalla-Torre et al.,
2024) and ESM-2 (Lin et al., 2023).

All three are transformers' ``EsmForMaskedLM`` layout: pre-LN blocks, a final
``emb_layer_norm_after``, no embedding layer norm (``emb_layer_norm_before`` false), and a
masked-LM head of dense -> GELU -> layer norm -> decoder + bias. They differ in:

- positions: NT v1 has a learned absolute table whose ids start at ``pad_token_id + 1``, so
  its first ``pad_token_id + 1`` rows are never read and are dropped here; ESM-2 and NT v2
  rotate queries and keys (rotary), and a position table stored beside is unused;
- ``token_dropout`` (NT v1, ESM-2): the embeddings are rescaled by 0.88 on unmasked input;
- the feed-forward: NT v2 (``add_bias_fnn`` in its config, whose modelling code is remote
  code and is never run here) uses SwiGLU with an intermediate weight of shape
  ``[2 * intermediate_size, hidden_size]`` and no MLP biases; the others a GELU MLP;
- the decoder: tied to the token embeddings for ESM-2, its own matrix for NT
  (``tie_word_embeddings`` false).

The encoder's ``max_len`` is the number of absolute position rows after the dropped ones
(NT v1: 1000 tokens), or ``max_position_embeddings`` under rotary, which has no table to
outgrow. Its pooled embedding is the mean over all real tokens, ``<cls>`` (and ESM-2's
``<eos>``) included. Layer norms stored under transformers' legacy ``gamma``/``beta`` names
are read too (`checkpoints.bert_import.read_weights`).

`TENSORS` and `LAYER_TENSORS` are the whole name mapping, as plain tables an exporter can
invert. The tokenizer is the checkpoint's own (`zoo.sequence.vocabulary_tokenizer`), and the
folder's ``vocab.txt`` must list exactly its vocabulary.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from checkpoints.bert_import import check_vocabulary, encoder_from_tensors, read_weights
from checkpoints.errors import CheckpointError
from zoo.common.rotary import BASE
from zoo.common.transformer import TransformerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.sequence.vocabulary_tokenizer import SPECIAL_TOKENS, VocabularyTokenizer

# upstream tensor name -> encoder key (`checkpoints.tree_keys`)
TENSORS = {
    "esm.embeddings.word_embeddings.weight": "token_embedding.weight",
    "esm.embeddings.position_embeddings.weight": "position_embedding.weight",
    "esm.encoder.emb_layer_norm_after.weight": "final_norm.weight",
    "esm.encoder.emb_layer_norm_after.bias": "final_norm.bias",
    "lm_head.dense.weight": "mlm_dense.weight",
    "lm_head.dense.bias": "mlm_dense.bias",
    "lm_head.layer_norm.weight": "mlm_norm.weight",
    "lm_head.layer_norm.bias": "mlm_norm.bias",
    "lm_head.bias": "mlm_bias",
    "lm_head.decoder.weight": "mlm_decoder",
}
# esm.encoder.layer.{i}.NAME.{weight,bias} -> stack.layers.OURS.{weight,bias}, stacked over i
LAYER_PREFIX = "esm.encoder.layer"
LAYER_TENSORS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.LayerNorm": "attention_norm",
    "intermediate.dense": "mlp_input",
    "output.dense": "mlp_output",
    "LayerNorm": "mlp_norm",
}
IGNORED_PREFIXES = ("esm.contact_head.", "esm.pooler.")
ROTARY_FREQUENCIES = (
    "esm.rotary_embeddings.inv_freq",
    ".attention.self.rotary_embeddings.inv_freq",
)
# special tokens of each vocabulary besides the k-mers and letters: NT's JAX vocabulary
# ends with <eos> and <bos>, which v1 checkpoints have no embedding rows for
VOCABULARY_EXTRAS = {"nt-v1": ("<eos>", "<bos>")}


def esm_variant(hf: dict) -> str | None:
    """Which published family a transformers ``config.json`` dict describes: ``"nt-v2"``
    (ESM layout with NT's ``add_bias_fnn`` flag), ``"esm2"`` (ESM, 33 tokens), ``"nt-v1"``
    (ESM, ``4^k + 9`` tokens), ``"dnabert"`` (BERT, ``4^k + 5`` tokens, k = 3..6), or None.
    Only the dict is read; a DNABERT folder's ``vocab.txt`` is checked by `import_bert`."""
    vocab_size = hf.get("vocab_size")
    if not isinstance(vocab_size, int):
        return None
    if hf.get("model_type") == "esm":
        if "add_bias_fnn" in hf:
            return "nt-v2"
        if vocab_size == len(VocabularyTokenizer("esm2").vocab):
            return "esm2"
        return "nt-v1" if _kmer(vocab_size, "nt-v1") is not None else None
    if hf.get("model_type") == "bert" and _kmer(vocab_size, "dnabert") in (3, 4, 5, 6):
        return "dnabert"
    return None


def _kmer(vocab_size: int, scheme: str) -> int | None:
    """k such that the `scheme` vocabulary of k-mers has `vocab_size` tokens, or None."""
    letters = 0 if scheme == "dnabert" else 5  # A T C G N after the k-mers
    n_kmers = vocab_size - len(SPECIAL_TOKENS[scheme]) - letters
    k = round(math.log(n_kmers, 4)) if n_kmers > 0 else 0
    return k if 2 <= k <= 9 and 4**k == n_kmers else None


def esm_tokenizer(hf: dict) -> VocabularyTokenizer:
    """The tokenizer of the ESM-layout checkpoint whose ``config.json`` is `hf`.

    Raises:
        CheckpointError: if the config is not NT v1, NT v2 or ESM-2.
    """
    variant = esm_variant(hf)
    if variant not in ("esm2", "nt-v1", "nt-v2"):
        raise CheckpointError(
            f"config.json (model_type {hf.get('model_type')!r}, vocab_size "
            f"{hf.get('vocab_size')!r}) is not a Nucleotide Transformer v1/v2 or ESM-2 config"
        )
    if variant == "esm2":
        return VocabularyTokenizer("esm2")
    kmer = _kmer(hf["vocab_size"], variant)
    if kmer is None:
        raise CheckpointError(f"vocab_size {hf['vocab_size']} is not a {variant} k-mer vocabulary")
    return VocabularyTokenizer(variant, kmer)


def esm_config(hf: dict) -> TransformerSequenceEncoderConfig:
    """The encoder config equivalent to an ESM-layout ``config.json`` dict.

    Raises:
        CheckpointError: naming every setting the encoder cannot reproduce.
    """
    tokenizer = esm_tokenizer(hf)
    positions = hf.get("position_embedding_type", "absolute")
    problems = []
    if positions not in ("absolute", "rotary"):
        problems.append(f"position_embedding_type {positions!r} is not 'absolute' or 'rotary'")
    if hf.get("emb_layer_norm_before"):
        problems.append("emb_layer_norm_before (a layer norm on the embeddings) is not supported")
    if hf.get("is_decoder") or hf.get("add_cross_attention") or hf.get("is_folding_model"):
        problems.append("decoders, cross-attention and folding models are not supported")
    if hf.get("rope_theta", BASE) != BASE:
        problems.append(f"rope_theta {hf['rope_theta']} is not {BASE}")
    for name, expected in (
        ("pad_token_id", tokenizer.pad_id),
        ("mask_token_id", tokenizer.mask_id),
    ):
        if hf.get(name) != expected:
            problems.append(
                f"{name} is {hf.get(name)!r}, the {tokenizer.name} vocabulary has {expected}"
            )
    if problems:
        raise CheckpointError(
            f"cannot import this {tokenizer.name} checkpoint: " + "; ".join(problems)
        )
    nt_v2 = tokenizer.scheme == "nt-v2"
    transformer = TransformerConfig(
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.0),
        norm="pre",
        activation="gelu",  # ESM's MLP and LM head use the exact erf GELU whatever hidden_act
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        rotary=positions == "rotary",
        feed_forward="swiglu" if nt_v2 else "dense",
        mlp_bias=bool(hf.get("add_bias_fnn", True)),
    )
    rows = hf["max_position_embeddings"]
    return TransformerSequenceEncoderConfig(
        transformer=transformer,
        max_len=rows if positions == "rotary" else rows - tokenizer.pad_id - 1,
        positions="none" if positions == "rotary" else "learned",
        pooling="mean",
        vocabulary=tokenizer.name,
        token_dropout=bool(hf.get("token_dropout", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def converted_tensors(
    weights: dict[str, np.ndarray], config: TransformerSequenceEncoderConfig
) -> dict[str, np.ndarray]:
    """The encoder's flat keys and float32 values from an ESM-layout state dict: the
    per-layer tensors stacked on a leading layer axis, the absolute position table without
    its first ``pad_id + 1`` rows.

    Raises:
        CheckpointError: listing missing tensors, tensors the encoder has no place for, and
            stored rotary frequencies that are not the encoder's.
    """
    t = config.transformer
    taken: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise CheckpointError(f"the {config.vocabulary} checkpoint has no tensor {name!r}")
        taken.add(name)
        return np.asarray(weights[name], np.float32)

    skip = set()
    if config.positions == "none":
        skip.add("position_embedding.weight")  # a stored table is never read under rotary
    if config.tie_embeddings:
        skip.add("mlm_decoder")
    out = {ours: take(name) for name, ours in TENSORS.items() if ours not in skip}
    if "position_embedding.weight" in out:
        out["position_embedding.weight"] = out["position_embedding.weight"][config.pad_id + 1 :]
    for name, ours in LAYER_TENSORS.items():
        bias_free = not t.mlp_bias and ours in ("mlp_input", "mlp_output")
        for part in ("weight",) if bias_free else ("weight", "bias"):
            layers = [take(f"{LAYER_PREFIX}.{i}.{name}.{part}") for i in range(t.n_layers)]
            out[f"stack.layers.{ours}.{part}"] = np.stack(layers)
    head_dim = t.dim // t.n_heads
    frequencies = BASE ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    for name in sorted(k for k in weights if k.endswith(ROTARY_FREQUENCIES)):
        taken.add(name)
        if not np.allclose(weights[name], frequencies, rtol=1e-3):
            raise CheckpointError(f"{name} holds rotary frequencies other than base {BASE}'s")
    left = sorted(
        k
        for k in set(weights) - taken
        if not k.startswith(IGNORED_PREFIXES) and not (k in TENSORS and TENSORS[k] in skip)
    )
    if left:
        raise CheckpointError(
            f"the {config.vocabulary} checkpoint has tensors the encoder cannot hold: {left}"
        )
    return out


def import_esm(folder: str | os.PathLike) -> TransformerSequenceEncoder:
    """Convert the NT v1, NT v2 or ESM-2 checkpoint in `folder` (``config.json``,
    ``model.safetensors`` and ``vocab.txt``; nothing else in it is read or run).

    Returns:
        The encoder; ``model.tokenizer`` is the checkpoint's own tokenizer.

    Raises:
        CheckpointError: for an unsupported config, a vocab.txt that is not the checkpoint's
            vocabulary, pickle-only weights, or missing or unplaceable tensors.
    """
    folder = Path(folder)
    config = esm_config(json.loads((folder / "config.json").read_text()))
    tokenizer = config.tokenizer
    check_vocabulary(folder, tokenizer, extra_tokens=VOCABULARY_EXTRAS.get(tokenizer.scheme, ()))
    return encoder_from_tensors(config, converted_tensors(read_weights(folder), config))
