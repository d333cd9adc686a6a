"""`TransformerSequenceEncoder`: a BERT-style encoder of nucleotide sequences, as DNABERT
(Ji et al., 2021) and RNA-FM (Chen et al., 2022).

Tokens (single nucleotides or k-mers, see `zoo.sequence.nucleotides.NucleotideTokenizer`) are
embedded, given sinusoidal or learned positions, and run through the shared
`zoo.common.transformer.TransformerStack` with padding masked out of attention. The sequence
embedding is the mean of the real token states or the ``[CLS]`` state. A masked-language-model
head (dense + activation + layer norm, then the transposed token embedding plus a bias, as in
BERT) gives logits over the vocabulary.

The input may also be a one-hot (or any soft) distribution over the vocabulary per
position; it is projected with the token-embedding matrix, so ``one_hot(ids) @ E`` gives
exactly the embedding of ``ids`` and gradients with respect to the sequence are available.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from zoo.common.config import Config, require, require_choice, require_positive
from zoo.common.transformer import (
    ACTIVATIONS,
    TransformerConfig,
    TransformerStack,
    dense,
    dropout,
    masked_mean,
    normalise,
    sinusoidal_positions,
)
from zoo.sequence.cnn import SequenceOutput
from zoo.sequence.nucleotides import PAD, NucleotideTokenizer


@dataclasses.dataclass(frozen=True)
class TransformerSequenceEncoderConfig(Config):
    """Architecture of a `TransformerSequenceEncoder`.

    Attributes:
        transformer: the block stack (width, depth, heads, dropout, pre/post norm, ...).
        alphabet: nucleotide letters (``"ACGU"`` for RNA).
        kmer: letters per token.
        kmer_stride: letters between token starts: 1 overlapping, ``kmer`` non-overlapping.
        allow_n: whether N is accepted (as ``[UNK]``) or rejected.
        max_len: most tokens per sequence, ``[CLS]`` included; the size of the learned
            position table.
        positions: ``"learned"`` (BERT, DNABERT) or ``"sinusoidal"`` (fixed; the token
            embeddings are then multiplied by ``sqrt(dim)``, as Vaswani et al. (2017) do, so
            that they are not drowned by the unit-amplitude sinusoids).
        pooling: sequence embedding from ``"mean"`` of real tokens or the ``"cls"`` token.
        vocab_size: rows of the token-embedding table when token ids come from an external
            tokenizer (an imported BERT's WordPiece or DNABERT k-mer vocabulary); None uses
            the nucleotide tokenizer's vocabulary.
    """

    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    alphabet: str = "ACGT"
    kmer: int = 1
    kmer_stride: int = 1
    allow_n: bool = True
    max_len: int = 512
    positions: str = "learned"
    pooling: str = "mean"
    vocab_size: int | None = None

    def validate(self) -> None:
        self.tokenizer  # noqa: B018  (validates alphabet, kmer and stride)
        require_positive(max_len=self.max_len)
        require_choice("positions", self.positions, ("sinusoidal", "learned"))
        require_choice("pooling", self.pooling, ("mean", "cls"))
        require(self.vocab_size is None or self.vocab_size > 0, "vocab_size must be positive")
        require(
            isinstance(self.transformer, TransformerConfig),
            "transformer must be a TransformerConfig",
        )

    @property
    def tokenizer(self) -> NucleotideTokenizer:
        """The tokenizer this architecture reads."""
        return NucleotideTokenizer(self.alphabet, self.kmer, self.kmer_stride, self.allow_n)

    @property
    def n_tokens(self) -> int:
        """Rows of the token-embedding table: `vocab_size` if set, else the tokenizer's."""
        return self.tokenizer.vocab_size if self.vocab_size is None else self.vocab_size


class TransformerSequenceEncoder(eqx.Module):
    """Transformer encoder of one tokenized nucleotide sequence (see the module docstring)."""

    token_embedding: eqx.nn.Embedding
    position_embedding: eqx.nn.Embedding | None
    embedding_norm: eqx.nn.LayerNorm | None
    embedding_dropout: eqx.nn.Dropout
    stack: TransformerStack
    final_norm: eqx.nn.LayerNorm | None
    mlm_dense: eqx.nn.Linear
    mlm_norm: eqx.nn.LayerNorm
    mlm_bias: Float[Array, " vocab"]
    config: TransformerSequenceEncoderConfig = eqx.field(static=True)

    def __init__(self, config: TransformerSequenceEncoderConfig, *, key: PRNGKeyArray):
        t = config.transformer
        vocab = config.n_tokens
        token_key, position_key, stack_key, mlm_key = jax.random.split(key, 4)
        # Learned positions: BERT's 0.02. Sinusoidal: N(0, 1/dim), multiplied by sqrt(dim) in
        # `embed` (Vaswani et al.), so tokens enter at the sinusoids' unit amplitude.
        token_scale = 0.02 if config.positions == "learned" else t.dim**-0.5
        self.token_embedding = eqx.nn.Embedding(
            weight=token_scale * jax.random.normal(token_key, (vocab, t.dim))
        )
        self.position_embedding = (
            eqx.nn.Embedding(weight=0.02 * jax.random.normal(position_key, (config.max_len, t.dim)))
            if config.positions == "learned"
            else None
        )
        post = t.norm == "post"
        self.embedding_norm = eqx.nn.LayerNorm(t.dim, eps=t.layer_norm_eps) if post else None
        self.final_norm = None if post else eqx.nn.LayerNorm(t.dim, eps=t.layer_norm_eps)
        self.embedding_dropout = eqx.nn.Dropout(t.dropout)
        self.stack = TransformerStack(t, key=stack_key)
        self.mlm_dense = eqx.nn.Linear(t.dim, t.dim, key=mlm_key)
        self.mlm_norm = eqx.nn.LayerNorm(t.dim, eps=t.layer_norm_eps)
        self.mlm_bias = jnp.zeros(vocab)
        self.config = config

    @property
    def tokenizer(self) -> NucleotideTokenizer:
        """The tokenizer whose ids this model reads."""
        return self.config.tokenizer

    def embed(
        self, tokens: Int[Array, " seq_len"] | Float[Array, "seq_len vocab"]
    ) -> Float[Array, "seq_len dim"]:
        """Token (or soft one-hot) embeddings plus positions, before dropout and the stack."""
        seq_len = tokens.shape[0]
        if seq_len > self.config.max_len:
            raise ValueError(
                f"sequence has {seq_len} tokens, more than max_len={self.config.max_len}"
            )
        weight = self.token_embedding.weight
        if tokens.ndim == 2 and tokens.shape[1] != weight.shape[0]:
            raise ValueError(
                f"tokens has {tokens.shape[1]} columns, but the vocabulary has {weight.shape[0]}"
            )
        if jnp.issubdtype(tokens.dtype, jnp.integer):  # a gather would clamp a bad id
            vocab = weight.shape[0]
            tokens = eqx.error_if(
                tokens, (tokens < 0) | (tokens >= vocab), f"tokens must be ids in [0, {vocab})"
            )
            x = weight[tokens]
        else:
            x = tokens @ weight
        if self.position_embedding is None:
            x = x * x.shape[-1] ** 0.5 + sinusoidal_positions(seq_len, x.shape[-1])
        else:
            x = x + self.position_embedding.weight[:seq_len]
        return x if self.embedding_norm is None else normalise(self.embedding_norm, x)

    def __call__(
        self,
        tokens: Int[Array, " seq_len"] | Float[Array, "seq_len vocab"],
        mask: Bool[Array, " seq_len"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> SequenceOutput:
        """Encode one sequence.

        Args:
            tokens: token ids, or a distribution over the vocabulary at each position.
            mask: True at real tokens; by default ids other than ``[PAD]`` (or, for soft
                input, rows that are not all zero).
            key: drives dropout; needed only while training with ``dropout > 0``.

        Returns:
            `SequenceOutput`: per-token hidden states (seq_len, dim) and the pooled embedding.
        """
        if mask is None:
            integer = jnp.issubdtype(tokens.dtype, jnp.integer)
            mask = tokens != PAD if integer else jnp.any(tokens != 0, axis=-1)
        embedding_key, stack_key = (None, None) if key is None else jax.random.split(key)
        x = dropout(self.embedding_dropout, self.embed(tokens), embedding_key)
        hidden = self.stack(x, mask, key=stack_key)
        if self.final_norm is not None:
            hidden = normalise(self.final_norm, hidden)
        pooled = hidden[0] if self.config.pooling == "cls" else masked_mean(hidden, mask)
        return SequenceOutput(hidden=hidden, pooled=pooled)

    def mlm_logits(self, hidden: Float[Array, "n dim"]) -> Float[Array, "n vocab"]:
        """Masked-language-model logits for the given hidden states (pass only the masked
        positions to save work)."""
        activation = ACTIVATIONS[self.config.transformer.activation]
        h = normalise(self.mlm_norm, activation(dense(self.mlm_dense, hidden)))
        return h @ self.token_embedding.weight.T + self.mlm_bias
