"""`TransformerSequenceEncoder`: a BERT-style encoder of nucleotide (or protein) sequences, as
DNABERT (Ji et al., 2021), RNA-FM (Chen et al., 2022), Nucleotide Transformer (Dalla-Torre et
al., 2024) and ESM-2 (Lin et al., 2023).

Tokens (single nucleotides or k-mers, see `zoo.sequence.nucleotides.NucleotideTokenizer`, or
an imported checkpoint's own vocabulary, `zoo.sequence.vocabulary_tokenizer`) are embedded,
given sinusoidal or learned positions (or none, when the stack rotates queries and keys),
and run through the shared `zoo.common.transformer.TransformerStack` with padding masked out
of attention. The sequence embedding is the mean of the real token states or the ``[CLS]``
state. A masked-language-model head (dense + activation + layer norm, then the transposed
token embedding, or an untied decoder matrix, plus a bias, as in BERT) gives logits over the
vocabulary.

ESM's token dropout (``token_dropout``): the embeddings of ``<mask>`` tokens are zeroed and
all embeddings are multiplied by ``(1 - 0.15 * 0.8) / (1 - r)``, where ``r`` is the fraction
of real tokens that are ``<mask>``; at inference on unmasked input that is 0.88.

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
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer

TRAINING_MASK_FRACTION = 0.15 * 0.8  # ESM's pretraining: 15% picked, 80% of those <mask>


@dataclasses.dataclass(frozen=True)
class TransformerSequenceEncoderConfig(Config):
    """Architecture of a `TransformerSequenceEncoder`.

    Attributes:
        transformer: the block stack (width, depth, heads, dropout, pre/post norm, ...).
        alphabet: nucleotide letters (``"ACGU"`` for RNA).
        kmer: letters per token.
        kmer_stride: letters between token starts: 1 overlapping, ``kmer`` non-overlapping.
        allow_n: whether N is accepted (as ``[UNK]``) or rejected.
        max_len: most tokens per sequence, special tokens included; the size of the learned
            position table.
        positions: ``"learned"`` (BERT, DNABERT, NT v1), ``"sinusoidal"`` (fixed; the token
            embeddings are then multiplied by ``sqrt(dim)``, as Vaswani et al. (2017) do, so
            that they are not drowned by the unit-amplitude sinusoids) or ``"none"`` (only
            with ``transformer.rotary``, which then carries the positions: ESM-2, NT v2).
        pooling: sequence embedding from ``"mean"`` of real tokens or the ``"cls"`` token.
        vocab_size: rows of the token-embedding table when token ids come from a tokenizer
            the zoo does not have (an imported BERT's WordPiece vocabulary); None uses the
            tokenizer's vocabulary.
        vocabulary: a published checkpoint's tokenizer, by name (``"dnabert-6"``,
            ``"nt-v1-6"``, ``"nt-v2-6"``, ``"esm2"``; see
            `zoo.sequence.vocabulary_tokenizer`), used instead of the nucleotide tokenizer
            (then `alphabet`, `kmer`, `kmer_stride` and `allow_n` must keep their defaults).
        token_dropout: ESM's token-dropout rescaling of the embeddings (module docstring);
            needs a `vocabulary` with a ``<mask>`` token.
        tie_embeddings: whether the masked-LM head's decoder is the token-embedding matrix
            (BERT, ESM-2) or a matrix of its own (NT).
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
    vocabulary: str | None = None
    token_dropout: bool = False
    tie_embeddings: bool = True

    def validate(self) -> None:
        self.tokenizer  # noqa: B018  (validates alphabet, kmer and stride, or the vocabulary)
        require_positive(max_len=self.max_len)
        require_choice("positions", self.positions, ("sinusoidal", "learned", "none"))
        require_choice("pooling", self.pooling, ("mean", "cls"))
        require(self.vocab_size is None or self.vocab_size > 0, "vocab_size must be positive")
        require(
            isinstance(self.transformer, TransformerConfig),
            "transformer must be a TransformerConfig",
        )
        require(
            self.positions != "none" or self.transformer.rotary,
            'positions="none" needs transformer.rotary, or the model sees no positions',
        )
        if self.vocabulary is not None:
            nucleotide = (self.alphabet, self.kmer, self.kmer_stride, self.allow_n)
            require(
                nucleotide == ("ACGT", 1, 1, True),
                "with a vocabulary, alphabet, kmer, kmer_stride and allow_n keep their defaults",
            )
            require(self.vocab_size is None, "vocab_size and vocabulary are exclusive")
        require(
            not self.token_dropout or isinstance(self.tokenizer, VocabularyTokenizer),
            "token_dropout needs a vocabulary with a mask token",
        )

    @property
    def tokenizer(self) -> NucleotideTokenizer | VocabularyTokenizer:
        """The tokenizer this architecture reads."""
        if self.vocabulary is not None:
            return VocabularyTokenizer.from_name(self.vocabulary)
        return NucleotideTokenizer(self.alphabet, self.kmer, self.kmer_stride, self.allow_n)

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return PAD if self.vocabulary is None else self.tokenizer.pad_id

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
    mlm_decoder: Float[Array, "vocab dim"] | None
    config: TransformerSequenceEncoderConfig = eqx.field(static=True)

    def __init__(self, config: TransformerSequenceEncoderConfig, *, key: PRNGKeyArray):
        t = config.transformer
        vocab = config.n_tokens
        token_key, position_key, stack_key, mlm_key, decoder_key = jax.random.split(key, 5)
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
        self.mlm_decoder = (
            None if config.tie_embeddings else 0.02 * jax.random.normal(decoder_key, (vocab, t.dim))
        )
        self.config = config

    @property
    def tokenizer(self) -> NucleotideTokenizer | VocabularyTokenizer:
        """The tokenizer whose ids this model reads."""
        return self.config.tokenizer

    def embed(
        self,
        tokens: Int[Array, " seq_len"] | Float[Array, "seq_len vocab"],
        mask: Bool[Array, " seq_len"] | None = None,
    ) -> Float[Array, "seq_len dim"]:
        """Token (or soft one-hot) embeddings, with `token_dropout` rescaled over the real
        positions of `mask` (default: all), plus positions; before dropout and the stack."""
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
        if self.config.token_dropout:
            x = self._token_dropout(tokens, x, mask)
        if self.config.positions == "sinusoidal":
            x = x * x.shape[-1] ** 0.5 + sinusoidal_positions(seq_len, x.shape[-1])
        elif self.config.positions == "learned":
            x = x + self.position_embedding.weight[:seq_len]
        return x if self.embedding_norm is None else normalise(self.embedding_norm, x)

    def _token_dropout(
        self,
        tokens: Int[Array, " seq_len"] | Float[Array, "seq_len vocab"],
        x: Float[Array, "seq_len dim"],
        mask: Bool[Array, " seq_len"] | None,
    ) -> Float[Array, "seq_len dim"]:
        """ESM's token dropout (module docstring)."""
        mask_id = self.tokenizer.mask_id
        if jnp.issubdtype(tokens.dtype, jnp.integer):
            is_mask = (tokens == mask_id).astype(x.dtype)
        else:
            is_mask = tokens[:, mask_id].astype(x.dtype)
        n_real = x.shape[0] if mask is None else mask.sum()
        observed = is_mask.sum() / jnp.maximum(n_real, 1)
        x = x * (1 - is_mask)[:, None]
        return x * (1 - TRAINING_MASK_FRACTION) / (1 - observed)

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
            mask: True at real tokens; by default ids other than the tokenizer's padding
                id (or, for soft input, rows that are not all zero).
            key: drives dropout; needed only while training with ``dropout > 0``.

        Returns:
            `SequenceOutput`: per-token hidden states (seq_len, dim) and the pooled embedding.
        """
        if mask is None:
            integer = jnp.issubdtype(tokens.dtype, jnp.integer)
            mask = tokens != self.config.pad_id if integer else jnp.any(tokens != 0, axis=-1)
        embedding_key, stack_key = (None, None) if key is None else jax.random.split(key)
        x = dropout(self.embedding_dropout, self.embed(tokens, mask), embedding_key)
        hidden = self.stack(x, mask, key=stack_key)
        if self.final_norm is not None:
            hidden = normalise(self.final_norm, hidden)
        pooled = hidden[0] if self.config.pooling == "cls" else masked_mean(hidden, mask)
        return SequenceOutput(hidden=hidden, pooled=pooled)

    def layer_states(
        self,
        tokens: Int[Array, " seq_len"] | Float[Array, "seq_len vocab"],
        mask: Bool[Array, " seq_len"],
    ) -> Float[Array, "n_states seq_len dim"]:
        """The residual stream of one sequence without dropout: the embeddings, then the
        output of every block (``n_layers + 1`` rows; the final norm is not applied)."""
        x = self.embed(tokens, mask)
        return jnp.concatenate([x[None], self.stack.layer_outputs(x, mask)])

    def mlm_logits(self, hidden: Float[Array, "n dim"]) -> Float[Array, "n vocab"]:
        """Masked-language-model logits for the given hidden states (pass only the masked
        positions to save work); the decoder is the token-embedding matrix unless the
        model has an untied one."""
        activation = ACTIVATIONS[self.config.transformer.activation]
        h = normalise(self.mlm_norm, activation(dense(self.mlm_dense, hidden)))
        decoder = self.token_embedding.weight if self.mlm_decoder is None else self.mlm_decoder
        return h @ decoder.T + self.mlm_bias
