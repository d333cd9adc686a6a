"""Import of Hugging Face BERT checkpoints (``config.json`` + ``model.safetensors``) as a
`zoo.TransformerSequenceEncoder`: the route for DNABERT-style k-mer BERTs.

BERT (Devlin et al., 2019) is a post-LN transformer with learned absolute positions, a
token-type embedding and an erf GELU. Its embedding layer computes
``LN(word[id] + position[p] + token_type[t])``; inputs of a single segment have ``t = 0``,
so the type-0 row is added to every row of the position table and the encoder needs no
token-type input. Weights map one to one otherwise (torch ``Linear`` and `eqx.nn.Linear`
both store ``(out, in)``); the per-layer tensors are stacked along a leading layer axis for
the scanned stack. BERT's pooler and next-sentence head are not part of the encoder and are
left out. The masked-LM head is taken from ``cls.predictions`` when the checkpoint has it;
otherwise it is freshly initialised from `key`. The token ids are those of the checkpoint's
own tokenizer (``vocab.txt``), so the config's ``vocab_size`` is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from checkpoints import safetensors_format
from checkpoints.errors import CheckpointError
from checkpoints.tree_keys import named_leaves, replace_leaves
from zoo.common.transformer import TransformerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATIONS["relu"] = "relu"
LAYER_TENSORS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "mlp_input",
    "output.dense": "mlp_output",
    "output.LayerNorm": "mlp_norm",
}
MLM_HEAD = {
    "cls.predictions.transform.dense.weight": "mlm_dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_norm.bias",
    "cls.predictions.bias": "mlm_bias",
}
IGNORED_PREFIXES = ("pooler.", "cls.seq_relationship.", "cls.predictions.decoder.")
IGNORED = ("embeddings.position_ids",)


def bert_config(hf: dict) -> TransformerSequenceEncoderConfig:
    """The encoder config equivalent to a transformers ``BertConfig`` dict.

    Raises:
        CheckpointError: naming every setting the encoder cannot reproduce.
    """
    problems = []
    if hf.get("model_type") != "bert":
        problems.append(f"model_type is {hf.get('model_type')!r}, only 'bert' is supported")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        problems.append(f"hidden_act {hf.get('hidden_act')!r} is not one of {sorted(ACTIVATIONS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(
            f"position_embedding_type {hf['position_embedding_type']!r} is not 'absolute'"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        problems.append("decoders and cross-attention are not supported")
    if problems:
        raise CheckpointError("cannot import this BERT: " + "; ".join(problems))
    transformer = TransformerConfig(
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1),
        norm="post",
        activation=ACTIVATIONS[hf.get("hidden_act", "gelu")],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
    )
    return TransformerSequenceEncoderConfig(
        transformer=transformer,
        max_len=hf["max_position_embeddings"],
        positions="learned",
        pooling="cls",
        vocab_size=hf["vocab_size"],
    )


def converted_tensors(weights: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """The encoder's flat keys (`checkpoints.tree_keys`) and float32 values from BERT's
    tensors (with or without the ``bert.`` prefix of ``BertFor*`` checkpoints).

    Raises:
        CheckpointError: listing missing tensors and tensors the encoder has no place for.
    """
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    taken: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise CheckpointError(f"the BERT checkpoint has no tensor {name!r}")
        taken.add(name)
        return np.asarray(weights[name], np.float32)

    positions = take("embeddings.position_embeddings.weight")
    if "embeddings.token_type_embeddings.weight" in weights:
        positions = positions + take("embeddings.token_type_embeddings.weight")[0]
    out = {
        "token_embedding.weight": take("embeddings.word_embeddings.weight"),
        "position_embedding.weight": positions,
        "embedding_norm.weight": take("embeddings.LayerNorm.weight"),
        "embedding_norm.bias": take("embeddings.LayerNorm.bias"),
    }
    for bert_name, ours in LAYER_TENSORS.items():
        for part in ("weight", "bias"):
            layers = [take(f"encoder.layer.{i}.{bert_name}.{part}") for i in range(n_layers)]
            out[f"stack.layers.{ours}.{part}"] = np.stack(layers)
    out |= {ours: take(name) for name, ours in MLM_HEAD.items() if name in weights}
    left = sorted(
        k for k in set(weights) - taken if not k.startswith(IGNORED_PREFIXES) and k not in IGNORED
    )
    if left:
        raise CheckpointError(f"the BERT checkpoint has tensors the encoder cannot hold: {left}")
    return out


def import_bert(
    folder: str | os.PathLike, *, key: PRNGKeyArray | None = None
) -> TransformerSequenceEncoder:
    """Convert the Hugging Face BERT checkpoint in `folder` (``config.json`` +
    ``model.safetensors``) into a `TransformerSequenceEncoder`.

    Args:
        folder: the checkpoint folder.
        key: initialises the masked-LM head when the checkpoint has none (default
            ``jax.random.key(0)``).

    Returns:
        The encoder; feed it the ids of the checkpoint's own tokenizer, with a mask.

    Raises:
        CheckpointError: for an unsupported config, or missing or unplaceable tensors.
    """
    folder = Path(folder)
    config = bert_config(json.loads((folder / "config.json").read_text()))
    try:
        weights, _ = safetensors_format.read(folder / "model.safetensors")
    except (FileNotFoundError, safetensors_format.CorruptWeightsError) as error:
        raise CheckpointError(str(error)) from None
    tensors = converted_tensors(weights, config.transformer.n_layers)
    if "mlm_bias" not in tensors:
        tensors |= fresh_mlm_head(config, jax.random.key(0) if key is None else key)
    model = eqx.filter_eval_shape(TransformerSequenceEncoder, config, key=jax.random.key(0))
    expected = named_leaves(model, _is_shape)
    wrong = sorted(k for k in tensors if tensors[k].shape != tuple(expected[k].shape))
    if wrong:
        raise CheckpointError(f"BERT tensors with shapes the config does not give: {wrong}")
    return replace_leaves(model, _is_shape, {k: jnp.asarray(v) for k, v in tensors.items()})


def fresh_mlm_head(
    config: TransformerSequenceEncoderConfig, key: PRNGKeyArray
) -> dict[str, jax.Array]:
    """A newly initialised masked-LM head (dense layer as `eqx.nn.Linear`, identity layer
    norm, zero output bias), for checkpoints that ship without one."""
    dim = config.transformer.dim
    dense = eqx.nn.Linear(dim, dim, key=key)
    return {
        "mlm_dense.weight": dense.weight,
        "mlm_dense.bias": dense.bias,
        "mlm_norm.weight": jnp.ones(dim),
        "mlm_norm.bias": jnp.zeros(dim),
        "mlm_bias": jnp.zeros(config.n_tokens),
    }


def _is_shape(leaf) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct)
