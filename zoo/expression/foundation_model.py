"""`DifferentiableFoundationModel`: a single-cell transformer in the manner of Geneformer
(Theodoris et al., 2023) and scGPT (Cui et al., 2024), trained by masked expression
prediction.

A cell's counts go through the model's `GeneTokenizer` (rank-value encoding: the top
expressed genes, each with its normalised log expression ``v = log1p(x)``). Each token is
embedded as ``gene_embedding[id] + value_encoder(v)`` (a continuous value encoder, as
scGPT), after a ``[CLS]`` token. With a random key, a fraction ``mask_ratio`` of the real
tokens of *this* cell is masked: their value embedding is replaced by a learned vector,
their gene identity is kept, and the head predicts ``v`` at every position. The masked
expression loss is the mean squared error over the masked positions. The cell embedding is
the ``[CLS]`` state or the mean state of the real, unmasked tokens.

Gradients flow from the loss and the embeddings back to the counts through ``v``.

The published single-cell transformers are settings of this model (the importers in
`checkpoints` build them):

- Geneformer (Theodoris et al., 2023) is a BERT over rank-ordered gene ids with no value
  input (``value_input=False``: a masked gene's id becomes ``<mask>``): gene embedding plus
  a learned absolute position embedding (``positions``), a layer norm over the sum
  (``embedding_norm``), post-LN ReLU layers, and BERT's masked-LM head with the decoder tied
  to the gene embedding (``head="gene_logits"``).
- scGPT (Cui et al., 2024) layer-normalises the gene embedding (``gene_norm``), adds the
  value embedding of quantile-binned values clamped at ``max_value``, encodes
  ``cls_value`` at ``<cls>``, has no positions, post-LN ReLU layers, and a three-layer
  LeakyReLU expression decoder (``head="expression_mlp"``).

A freshly built model holds an unfitted tokenizer, which refuses to run: give it one fitted
on the training corpus with `DifferentiableFoundationModel.with_tokenizer`, or load a
checkpoint, whose tokenizer medians are saved with the weights.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

from zoo.common.config import Config, require, require_choice, require_probability
from zoo.common.transformer import (
    ACTIVATIONS,
    TransformerConfig,
    TransformerStack,
    dense,
    dropout,
    masked_mean,
    normalise,
)
from zoo.expression.gene_tokenizer import (
    GeneTokenizer,
    GeneTokenizerConfig,
    GeneTokens,
    is_traced,
)


class FoundationOutput(NamedTuple):
    """What the foundation model computes for one cell, over the tokenizer's framed
    sequence (`GeneTokenizer.frame`: ``[CLS]`` first by default). `predicted_values` is
    set by the expression heads, `gene_logits` (over the vocabulary) by the
    ``"gene_logits"`` head; the other is None. `ids` are the input ids, masked ones
    replaced by ``mask_id`` in a model without a value input."""

    hidden: Float[Array, "tokens dim"]
    cell_embedding: Float[Array, " dim"]
    ids: Int[Array, " tokens"]
    values: Float[Array, " tokens"]
    predicted_values: Float[Array, " tokens"] | None
    token_mask: Bool[Array, " tokens"]
    expression_mask: Bool[Array, " tokens"]
    gene_logits: Float[Array, "tokens vocab"] | None = None


HEADS = ("expression", "expression_mlp", "gene_logits")


@dataclasses.dataclass(frozen=True)
class DifferentiableFoundationModelConfig(Config):
    """Architecture of a `DifferentiableFoundationModel`.

    Attributes:
        tokenizer: the gene vocabulary and rank-value encoding.
        transformer: the block stack.
        mask_ratio: fraction of each cell's real tokens masked when a key is given
            (at least one token is masked).
        pooling: cell embedding from the ``"cls"`` state (position 0) or the ``"mean"``
            of the unmasked gene tokens.
        value_input: whether each token's value enters through the continuous value
            encoder; without it (Geneformer) a masked gene's id is replaced by
            ``tokenizer.mask_id``.
        max_value: values are clamped to at most this before the value encoder (scGPT:
            512); None for no clamp.
        cls_value: the value encoded at ``[CLS]`` (scGPT: its ``pad_value`` -2); None gives
            ``[CLS]`` no value embedding.
        positions: rows of a learned absolute position embedding added to every token
            (BERT; at least ``tokenizer.sequence_length``); 0 for none.
        gene_norm: layer-normalise the gene embedding before the sum (scGPT).
        embedding_norm: layer-normalise the summed embedding (BERT).
        head: ``"expression"`` (Linear, GELU, Linear to one value per token),
            ``"expression_mlp"`` (scGPT: Linear, LeakyReLU, Linear, LeakyReLU, Linear) or
            ``"gene_logits"`` (BERT's masked-LM head: Linear, the transformer activation,
            LayerNorm, then the gene embedding transposed plus a bias).
    """

    tokenizer: GeneTokenizerConfig = dataclasses.field(default_factory=GeneTokenizerConfig)
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    mask_ratio: float = 0.15
    pooling: str = "cls"
    value_input: bool = True
    max_value: float | None = None
    cls_value: float | None = None
    positions: int = 0
    gene_norm: bool = False
    embedding_norm: bool = False
    head: str = "expression"

    def validate(self) -> None:
        require_probability(mask_ratio=self.mask_ratio)
        require_choice("pooling", self.pooling, ("cls", "mean"))
        require_choice("head", self.head, HEADS)
        require(
            self.pooling == "mean" or self.tokenizer.cls_id is not None,
            "pooling 'cls' needs a tokenizer with a cls_id",
        )
        require(
            self.value_input or self.tokenizer.mask_id is not None,
            "a model without a value input masks genes by id: the tokenizer needs a mask_id",
        )
        require(
            self.value_input or (self.max_value is None and self.cls_value is None),
            "max_value and cls_value need value_input",
        )
        require(
            self.cls_value is None or self.tokenizer.cls_id is not None,
            "cls_value needs a tokenizer with a cls_id",
        )
        require(
            self.positions == 0 or self.positions >= self.tokenizer.sequence_length,
            f"positions ({self.positions}) must be 0 or at least the sequence length "
            f"({self.tokenizer.sequence_length})",
        )


def random_expression_mask(
    token_mask: Bool[Array, " n"], ratio: float, *, key: PRNGKeyArray
) -> Bool[Array, " n"]:
    """Choose ``max(1, round(ratio * #real))`` real tokens uniformly at random."""
    n_real = token_mask.sum()
    n_masked = jnp.maximum(1, jnp.round(ratio * n_real)).astype(jnp.int32)
    priority = jnp.where(token_mask, jax.random.uniform(key, token_mask.shape), jnp.inf)
    order = jnp.argsort(jnp.argsort(priority))
    return token_mask & (order < n_masked)


class DifferentiableFoundationModel(eqx.Module):
    """Transformer over one cell's rank-value tokens (see the module docstring)."""

    tokenizer: GeneTokenizer
    gene_embedding: eqx.nn.Embedding
    gene_norm: eqx.nn.LayerNorm | None
    position_embedding: eqx.nn.Embedding | None
    value_input: eqx.nn.Linear | None
    value_output: eqx.nn.Linear | None
    value_norm: eqx.nn.LayerNorm | None
    mask_value: Float[Array, " dim"] | None
    embedding_norm: eqx.nn.LayerNorm | None
    embedding_dropout: eqx.nn.Dropout
    stack: TransformerStack
    final_norm: eqx.nn.LayerNorm | None
    head_hidden: eqx.nn.Linear
    head_middle: eqx.nn.Linear | None
    head_output: eqx.nn.Linear | None
    head_norm: eqx.nn.LayerNorm | None
    head_bias: Float[Array, " vocab"] | None
    config: DifferentiableFoundationModelConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiableFoundationModelConfig, *, key: PRNGKeyArray):
        t = config.transformer
        keys = jax.random.split(key, 7)
        extra_keys = jax.random.split(jax.random.fold_in(key, 1), 2)
        self.tokenizer = GeneTokenizer(config.tokenizer)
        vocab = config.tokenizer.vocab_size
        # Unit scale, like the layer-normalised value embedding it is added to: at BERT's
        # 0.02 a gene's identity starts 50 times weaker than its value, and fine-tuning on
        # cell types from scratch learns several times slower.
        self.gene_embedding = eqx.nn.Embedding(weight=jax.random.normal(keys[0], (vocab, t.dim)))
        self.gene_norm = layer_norm(t) if config.gene_norm else None
        self.position_embedding = (
            eqx.nn.Embedding(
                weight=0.02 * jax.random.normal(extra_keys[0], (config.positions, t.dim))
            )
            if config.positions
            else None
        )
        if config.value_input:
            self.value_input = eqx.nn.Linear(1, t.dim, key=keys[1])
            self.value_output = eqx.nn.Linear(t.dim, t.dim, key=keys[2])
            self.value_norm = layer_norm(t)
            self.mask_value = 0.02 * jax.random.normal(keys[3], (t.dim,))
        else:
            self.value_input = self.value_output = self.value_norm = self.mask_value = None
        self.embedding_norm = layer_norm(t) if config.embedding_norm else None
        self.embedding_dropout = eqx.nn.Dropout(t.dropout)
        self.stack = TransformerStack(t, key=keys[4])
        self.final_norm = None if t.norm == "post" else layer_norm(t)
        self.head_hidden = eqx.nn.Linear(t.dim, t.dim, key=keys[5])
        self.head_middle = (
            eqx.nn.Linear(t.dim, t.dim, key=extra_keys[1])
            if config.head == "expression_mlp"
            else None
        )
        if config.head == "gene_logits":
            self.head_output = None
            self.head_norm = layer_norm(t)
            self.head_bias = jnp.zeros(vocab)
        else:
            self.head_output = eqx.nn.Linear(t.dim, 1, key=keys[6])
            self.head_norm = self.head_bias = None
        self.config = config

    def with_tokenizer(self, tokenizer: GeneTokenizer) -> DifferentiableFoundationModel:
        """A copy using `tokenizer` (for example one fitted on the training corpus).

        Raises:
            ValueError: when its config differs from the model's or it is not fitted.
        """
        if tokenizer.config != self.config.tokenizer:
            raise ValueError(
                f"tokenizer config {tokenizer.config} differs from {self.config.tokenizer}"
            )
        tokenizer.checked_medians()
        return eqx.tree_at(lambda m: m.tokenizer, self, tokenizer)

    def encode_values(self, values: Float[Array, " n"]) -> Float[Array, "n dim"]:
        """The continuous value encoder: ``LayerNorm(W2 relu(W1 min(v, max_value)))``.

        Raises:
            ValueError: for a model without a value input.
        """
        if self.value_input is None:
            raise ValueError("this model has no value input (config.value_input is False)")
        if self.config.max_value is not None:
            values = jnp.minimum(values, self.config.max_value)
        h = jax.nn.relu(dense(self.value_input, values[:, None]))
        return normalise(self.value_norm, dense(self.value_output, h))

    def __call__(
        self,
        counts: Real[Array, " n_genes"],
        *,
        key: PRNGKeyArray | None = None,
        expression_mask: Bool[Array, " max_tokens"] | None = None,
    ) -> FoundationOutput:
        """Tokenize one cell with the model's `GeneTokenizer`, then `encode` it.

        Args:
            counts: the cell's counts over the tokenizer's genes: raw counts, or any
                non-negative expression (gradients flow back to it).
            key: when given, draws this cell's random expression mask and drives dropout;
                when None, nothing is masked (unless `expression_mask` is given) and dropout
                must be off (``dropout=0`` or `eqx.nn.inference_mode`).
            expression_mask: an explicit mask over the ``max_tokens`` gene tokens, used
                instead of a random one (masked only where there is a real token).

        Returns:
            `FoundationOutput`; every per-token field has the tokenizer's
            ``sequence_length`` entries (`GeneTokenizer.frame`): by default ``[CLS]``
            (never masked, value 0) and ``max_tokens`` gene tokens. Values binned by the
            tokenizer take the middle bin of tied counts (no key reaches the binning).

        Raises:
            ValueError: when the tokenizer is not fitted, the counts are bad
                (`GeneTokenizer.checked_counts`) or `expression_mask` has the wrong shape.
        """
        tokens = self.tokenizer(counts)
        return self._encode(tokens, key, self.checked_expression_mask(tokens, expression_mask))

    def encode(
        self,
        tokens: GeneTokens,
        *,
        key: PRNGKeyArray | None = None,
        expression_mask: Bool[Array, " max_tokens"] | None = None,
    ) -> FoundationOutput:
        """Run the transformer over one cell's tokens (arguments as in `__call__`).

        Raises:
            ValueError: when the token fields or `expression_mask` differ in shape from
                ``(max_tokens,)``, the ids are not integers, or an id lies outside the
                vocabulary ``[0, tokenizer.vocab_size)``. Under `jax.jit` or `jax.vmap` the
                last is checked by `eqx.error_if` (a runtime error), since an embedding
                lookup would silently clamp such an id.
        """
        expression_mask = self.checked_expression_mask(tokens, expression_mask)
        return self._encode(self.checked_ids(tokens), key, expression_mask)

    def checked_expression_mask(
        self, tokens: GeneTokens, expression_mask: Bool[Array, " max_tokens"] | None
    ) -> Bool[Array, " max_tokens"] | None:
        """`expression_mask` after checking that it and every field of `tokens` has shape
        ``(max_tokens,)`` (shapes are known even under `jax.jit`).

        Raises:
            ValueError: naming the field whose shape is wrong.
        """
        expected = (self.config.tokenizer.max_tokens,)
        fields = {f"tokens.{name}": value for name, value in tokens._asdict().items()}
        if expression_mask is not None:
            fields["expression_mask"] = expression_mask
        for name, value in fields.items():
            if jnp.shape(value) != expected:
                raise ValueError(
                    f"{name} must have shape {expected} (one cell), got {jnp.shape(value)}"
                )
        return expression_mask

    def checked_ids(self, tokens: GeneTokens) -> GeneTokens:
        """`tokens` after checking that the ids are integers lying in the vocabulary: eagerly,
        or with `eqx.error_if` when traced.

        Raises:
            ValueError: when the ids are not integers, or (eagerly) naming the vocabulary
                size when an id lies outside it.
        """
        if not jnp.issubdtype(jnp.result_type(tokens.ids), jnp.integer):
            raise ValueError(
                f"tokens.ids must be integers, got dtype {jnp.result_type(tokens.ids)}"
            )
        vocab = self.gene_embedding.weight.shape[0]
        message = f"tokens.ids must lie in the vocabulary [0, {vocab})"
        outside = (tokens.ids < 0) | (tokens.ids >= vocab)
        if is_traced(tokens.ids):
            return tokens._replace(ids=eqx.error_if(tokens.ids, outside.any(), message))
        if np.any(np.asarray(outside)):
            bad = np.asarray(tokens.ids)[np.asarray(outside)]
            raise ValueError(f"{message}; got {bad[:5].tolist()}")
        return tokens

    def _encode(
        self,
        tokens: GeneTokens,
        key: PRNGKeyArray | None,
        expression_mask: Bool[Array, " max_tokens"] | None,
    ) -> FoundationOutput:
        """`encode` without its checks, for tokens the model's own tokenizer made."""
        config = self.config
        mask_key, dropout_key = (None, None) if key is None else jax.random.split(key)
        if expression_mask is None:
            expression_mask = (
                jnp.zeros_like(tokens.mask)
                if mask_key is None
                else random_expression_mask(tokens.mask, config.mask_ratio, key=mask_key)
            )
        framed = self.tokenizer.frame(tokens)
        genes = self.gene_positions(framed)
        first = int(config.tokenizer.cls_id is not None)
        masked = (
            jnp.zeros_like(framed.mask)
            .at[first : first + config.tokenizer.max_tokens]
            .set(expression_mask & tokens.mask)
        )
        values = framed.values
        if config.cls_value is not None:
            values = values.at[0].set(config.cls_value)
        ids = framed.ids
        if self.value_input is None:
            ids = jnp.where(masked, config.tokenizer.mask_id, ids)
        x = self.gene_embedding.weight[ids]
        if self.gene_norm is not None:
            x = normalise(self.gene_norm, x)
        if self.value_input is not None:
            value_embedding = jnp.where(
                masked[:, None], self.mask_value, self.encode_values(values)
            )
            if first and config.cls_value is None:
                value_embedding = value_embedding.at[0].set(0.0)
            x = x + value_embedding
        if self.position_embedding is not None:
            x = x + self.position_embedding.weight[: x.shape[0]]
        if self.embedding_norm is not None:
            x = normalise(self.embedding_norm, x)
        embedding_key, stack_key = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        x = dropout(self.embedding_dropout, x, embedding_key)
        hidden = self.stack(x, framed.mask, key=stack_key)
        if self.final_norm is not None:
            hidden = normalise(self.final_norm, hidden)
        predicted, logits = self.head(hidden)
        cell = hidden[0] if config.pooling == "cls" else masked_mean(hidden, genes & ~masked)
        return FoundationOutput(
            hidden=hidden,
            cell_embedding=cell,
            ids=ids,
            values=values,
            predicted_values=predicted,
            token_mask=framed.mask,
            expression_mask=masked,
            gene_logits=logits,
        )

    def gene_positions(self, framed: GeneTokens) -> Bool[Array, " tokens"]:
        """Where a framed sequence holds a gene (not a special token or padding)."""
        first = self.config.tokenizer.first_gene_id
        is_gene_id = (framed.ids >= first) & (framed.ids < first + self.config.tokenizer.n_genes)
        return framed.mask & is_gene_id

    def head(
        self, hidden: Float[Array, "tokens dim"]
    ) -> tuple[Float[Array, " tokens"] | None, Float[Array, "tokens vocab"] | None]:
        """The output head over the final states: ``(predicted values, None)`` for the
        expression heads, ``(None, gene logits)`` for ``"gene_logits"`` (see the config)."""
        if self.config.head == "gene_logits":
            activation = ACTIVATIONS[self.config.transformer.activation]
            h = normalise(self.head_norm, activation(dense(self.head_hidden, hidden)))
            return None, h @ self.gene_embedding.weight.T + self.head_bias
        if self.config.head == "expression_mlp":
            h = jax.nn.leaky_relu(dense(self.head_hidden, hidden), negative_slope=0.01)
            h = jax.nn.leaky_relu(dense(self.head_middle, h), negative_slope=0.01)
        else:
            h = jax.nn.gelu(dense(self.head_hidden, hidden))
        return dense(self.head_output, h)[:, 0], None


def layer_norm(config: TransformerConfig) -> eqx.nn.LayerNorm:
    """A layer norm over the residual width with the transformer's epsilon."""
    return eqx.nn.LayerNorm(config.dim, eps=config.layer_norm_eps)


def masked_expression_loss(output: FoundationOutput) -> Float[Array, ""]:
    """Mean squared error of the predicted normalised log expression over masked tokens
    (of one cell, or of a vmapped batch: the mean is over all masked tokens).

    Raises:
        ValueError: for the output of a model whose head predicts gene logits, not values.
    """
    if output.predicted_values is None:
        raise ValueError("masked_expression_loss needs a model with an expression head")
    weights = output.expression_mask.astype(output.values.dtype)
    error = (output.predicted_values - output.values) ** 2
    return (error * weights).sum() / jnp.maximum(weights.sum(), 1.0)
