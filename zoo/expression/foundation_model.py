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

from zoo.common.config import Config, require_choice, require_probability
from zoo.common.transformer import (
    TransformerConfig,
    TransformerStack,
    dense,
    dropout,
    masked_mean,
    normalise,
)
from zoo.expression.gene_tokenizer import (
    GENE_CLS,
    N_SPECIAL,
    GeneTokenizer,
    GeneTokenizerConfig,
    GeneTokens,
    is_traced,
)


class FoundationOutput(NamedTuple):
    """What the foundation model computes for one cell; position 0 is ``[CLS]``."""

    hidden: Float[Array, "tokens dim"]
    cell_embedding: Float[Array, " dim"]
    ids: Int[Array, " tokens"]
    values: Float[Array, " tokens"]
    predicted_values: Float[Array, " tokens"]
    token_mask: Bool[Array, " tokens"]
    expression_mask: Bool[Array, " tokens"]


@dataclasses.dataclass(frozen=True)
class DifferentiableFoundationModelConfig(Config):
    """Architecture of a `DifferentiableFoundationModel`.

    Attributes:
        tokenizer: the gene vocabulary and rank-value encoding.
        transformer: the block stack.
        mask_ratio: fraction of each cell's real tokens masked when a key is given
            (at least one token is masked).
        pooling: cell embedding from the ``"cls"`` state or the ``"mean"`` of unmasked
            real tokens.
    """

    tokenizer: GeneTokenizerConfig = dataclasses.field(default_factory=GeneTokenizerConfig)
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    mask_ratio: float = 0.15
    pooling: str = "cls"

    def validate(self) -> None:
        require_probability(mask_ratio=self.mask_ratio)
        require_choice("pooling", self.pooling, ("cls", "mean"))


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
    value_input: eqx.nn.Linear
    value_output: eqx.nn.Linear
    value_norm: eqx.nn.LayerNorm
    mask_value: Float[Array, " dim"]
    embedding_dropout: eqx.nn.Dropout
    stack: TransformerStack
    final_norm: eqx.nn.LayerNorm | None
    head_hidden: eqx.nn.Linear
    head_output: eqx.nn.Linear
    config: DifferentiableFoundationModelConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiableFoundationModelConfig, *, key: PRNGKeyArray):
        t = config.transformer
        keys = jax.random.split(key, 7)
        self.tokenizer = GeneTokenizer(config.tokenizer)
        vocab = config.tokenizer.n_genes + N_SPECIAL
        # Unit scale, like the layer-normalised value embedding it is added to: at BERT's
        # 0.02 a gene's identity starts 50 times weaker than its value, and fine-tuning on
        # cell types from scratch learns several times slower.
        self.gene_embedding = eqx.nn.Embedding(weight=jax.random.normal(keys[0], (vocab, t.dim)))
        self.value_input = eqx.nn.Linear(1, t.dim, key=keys[1])
        self.value_output = eqx.nn.Linear(t.dim, t.dim, key=keys[2])
        self.value_norm = eqx.nn.LayerNorm(t.dim, eps=t.layer_norm_eps)
        self.mask_value = 0.02 * jax.random.normal(keys[3], (t.dim,))
        self.embedding_dropout = eqx.nn.Dropout(t.dropout)
        self.stack = TransformerStack(t, key=keys[4])
        self.final_norm = (
            None if t.norm == "post" else eqx.nn.LayerNorm(t.dim, eps=t.layer_norm_eps)
        )
        self.head_hidden = eqx.nn.Linear(t.dim, t.dim, key=keys[5])
        self.head_output = eqx.nn.Linear(t.dim, 1, key=keys[6])
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
        """The continuous value encoder: ``LayerNorm(W2 relu(W1 v))``."""
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
            `FoundationOutput`; every per-token field has ``max_tokens + 1`` entries,
            position 0 being ``[CLS]`` (never masked, value 0).

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
                vocabulary ``[0, N_SPECIAL + n_genes)``. Under `jax.jit` or `jax.vmap` the
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
        mask_key, dropout_key = (None, None) if key is None else jax.random.split(key)
        if expression_mask is None:
            expression_mask = (
                jnp.zeros_like(tokens.mask)
                if mask_key is None
                else random_expression_mask(tokens.mask, self.config.mask_ratio, key=mask_key)
            )

        def with_cls(x, first):
            return jnp.concatenate([jnp.asarray([first], x.dtype), x])

        ids = with_cls(tokens.ids, GENE_CLS)
        values = with_cls(tokens.values, 0.0)
        token_mask = with_cls(tokens.mask, True)
        masked = with_cls(expression_mask & tokens.mask, False)

        value_embedding = jnp.where(masked[:, None], self.mask_value, self.encode_values(values))
        x = self.gene_embedding.weight[ids] + value_embedding.at[0].set(0.0)
        embedding_key, stack_key = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        x = dropout(self.embedding_dropout, x, embedding_key)
        hidden = self.stack(x, token_mask, key=stack_key)
        if self.final_norm is not None:
            hidden = normalise(self.final_norm, hidden)
        predicted = dense(self.head_output, jax.nn.gelu(dense(self.head_hidden, hidden)))[:, 0]
        unmasked_genes = (token_mask & ~masked).at[0].set(False)
        cell = hidden[0] if self.config.pooling == "cls" else masked_mean(hidden, unmasked_genes)
        return FoundationOutput(
            hidden=hidden,
            cell_embedding=cell,
            ids=ids,
            values=values,
            predicted_values=predicted,
            token_mask=token_mask,
            expression_mask=masked,
        )


def masked_expression_loss(output: FoundationOutput) -> Float[Array, ""]:
    """Mean squared error of the predicted normalised log expression over masked tokens
    (of one cell, or of a vmapped batch: the mean is over all masked tokens)."""
    weights = output.expression_mask.astype(output.values.dtype)
    error = (output.predicted_values - output.values) ** 2
    return (error * weights).sum() / jnp.maximum(weights.sum(), 1.0)
