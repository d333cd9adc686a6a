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
otherwise it is freshly initialised from `key`.

The token ids are those of the checkpoint's own tokenizer (``vocab.txt``). A DNABERT
vocabulary (``[PAD] [UNK] [CLS] [SEP] [MASK]`` then every k-mer) must be exactly the
``dnabert-k`` vocabulary of `zoo.sequence.vocabulary_tokenizer`, and the model then carries
that tokenizer (``model.tokenizer`` reads raw DNA); any other vocabulary (WordPiece) only
sets the config's ``vocab_size``, and the ids come from the user's own tokenizer.

The helpers `read_weights`, `check_vocabulary` and `encoder_from_tensors` are shared with
`checkpoints.esm_import`. Only safetensors are read: a folder whose weights are only a
PyTorch pickle is refused with what to do instead.
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
from zoo.sequence.vocabulary_tokenizer import SPECIAL_TOKENS, VocabularyTokenizer

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
LEGACY_NORM_NAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def dnabert_kmer(vocab: list[str]) -> int | None:
    """k if `vocab` (the lines of a ``vocab.txt``) starts like a DNABERT k-mer vocabulary
    (its five special tokens, then a k-mer of A/C/G/T), else None."""
    specials = SPECIAL_TOKENS["dnabert"]
    first = vocab[len(specials)] if len(vocab) > len(specials) else ""
    if tuple(vocab[: len(specials)]) != specials or not first or set(first) - set("ACGT"):
        return None
    return len(first)


def bert_config(hf: dict, vocabulary: str | None = None) -> TransformerSequenceEncoderConfig:
    """The encoder config equivalent to a transformers ``BertConfig`` dict; `vocabulary`
    names the zoo tokenizer of the checkpoint's ids (``"dnabert-6"``), if the zoo has it.

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
        vocab_size=None if vocabulary else hf["vocab_size"],
        vocabulary=vocabulary,
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
        The encoder. For a DNABERT vocabulary ``model.tokenizer`` is DNABERT's k-mer
        tokenizer; otherwise feed it the ids of the checkpoint's own tokenizer, with a mask.

    Raises:
        CheckpointError: for an unsupported config, a k-mer vocab.txt that is not DNABERT's,
            pickle-only weights, or missing or unplaceable tensors.
    """
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    vocabulary = None
    vocab_file = folder / "vocab.txt"
    if vocab_file.is_file():
        kmer = dnabert_kmer(vocab_file.read_text().splitlines())
        if kmer is not None:
            tokenizer = VocabularyTokenizer("dnabert", kmer)
            check_vocabulary(folder, tokenizer)
            vocabulary = tokenizer.name
    config = bert_config(hf, vocabulary)
    if config.n_tokens != hf["vocab_size"]:
        raise CheckpointError(
            f"config.json has vocab_size {hf['vocab_size']}, but vocab.txt has {config.n_tokens}"
        )
    tensors = converted_tensors(read_weights(folder), config.transformer.n_layers)
    if "mlm_bias" not in tensors:
        tensors |= fresh_mlm_head(config, jax.random.key(0) if key is None else key)
    return encoder_from_tensors(config, tensors)


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """The tensors of ``folder/model.safetensors``, layer norms under their ``weight`` and
    ``bias`` names.

    Raises:
        CheckpointError: if the file is missing (saying what to do when the folder holds
            only a PyTorch pickle, which is never loaded) or corrupt.
    """
    path = folder / "model.safetensors"
    if not path.is_file() and any((folder / name).is_file() for name in PICKLES):
        raise CheckpointError(
            f"{folder} has only PyTorch pickle weights (pytorch_model.bin), which biozoo never "
            "loads: use a revision with model.safetensors (such as the Hub's safetensors "
            "conversion branch, org/name@refs/pr/N) or convert it on your machine with torch "
            "(torch.load(..., weights_only=True), then safetensors.torch.save_file)"
        )
    try:
        weights = safetensors_format.read(path)[0]
    except (FileNotFoundError, safetensors_format.CorruptWeightsError) as error:
        raise CheckpointError(str(error)) from None
    renamed = {_standard_name(k): v for k, v in weights.items()}
    if len(renamed) != len(weights):
        raise CheckpointError(
            f"{path} holds a layer norm under both its gamma/beta and weight/bias names"
        )
    return renamed


def _standard_name(name: str) -> str:
    """`name` with a layer norm's TF-era ``gamma``/``beta`` (which transformers 5 still
    writes for BERT and ESM) read as ``weight``/``bias``."""
    for legacy, standard in LEGACY_NORM_NAMES.items():
        if name.endswith(legacy):
            return name.removesuffix(legacy) + standard
    return name


def check_vocabulary(
    folder: Path, tokenizer: VocabularyTokenizer, *, extra_tokens: tuple[str, ...] = ()
) -> None:
    """Raise `CheckpointError` unless ``folder/vocab.txt`` lists exactly `tokenizer`'s
    vocabulary (optionally followed by `extra_tokens`), so its ids are the model's."""
    path = folder / "vocab.txt"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no vocab.txt to confirm the {tokenizer.name} token ids"
        )
    lines = tuple(path.read_text().splitlines())
    if lines in (tokenizer.vocab, tokenizer.vocab + extra_tokens):
        return
    differ = next(
        (i for i, (a, b) in enumerate(zip(lines, tokenizer.vocab, strict=False)) if a != b),
        min(len(lines), tokenizer.vocab_size),
    )
    found = lines[differ] if differ < len(lines) else "the end of the file"
    expected = tokenizer.vocab[differ] if differ < tokenizer.vocab_size else "the end"
    raise CheckpointError(
        f"{path} is not the {tokenizer.name} vocabulary ({len(lines)} lines, expected "
        f"{tokenizer.vocab_size}): line {differ + 1} is {found!r}, expected {expected!r}"
    )


def encoder_from_tensors(
    config: TransformerSequenceEncoderConfig, tensors: dict[str, np.ndarray | jax.Array]
) -> TransformerSequenceEncoder:
    """The encoder of `config` holding `tensors` (flat keys, `checkpoints.tree_keys`).

    Raises:
        CheckpointError: listing tensors whose shapes the config does not give, and leaves
            of the model that no tensor fills.
    """
    model = eqx.filter_eval_shape(TransformerSequenceEncoder, config, key=jax.random.key(0))
    expected = named_leaves(model, _is_shape)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"the converted checkpoint has no tensors for {missing}")
    wrong = sorted(k for k in tensors if tensors[k].shape != tuple(expected[k].shape))
    if wrong:
        raise CheckpointError(f"tensors with shapes the config does not give: {wrong}")
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
