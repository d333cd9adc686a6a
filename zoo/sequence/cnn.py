"""`SequenceEmbedding`: a 1-D convolutional network over one-hot DNA or RNA.

A stack of same-padded convolutions with ReLU (as in DeepSEA, Zhou & Troyanskaya, 2015, and
Basset, Kelley et al., 2016), a position-wise projection to ``embedding_dim`` features, and a
global average over the real (unpadded) positions.

Padding never changes a result: after every layer the features at padded positions are
set to zero, which is exactly what a "same" convolution sees past the end of an unpadded
sequence.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from zoo.common.config import Config, require, require_positive, require_probability
from zoo.common.transformer import dense, masked_mean
from zoo.sequence.nucleotides import one_hot, validate_alphabet


class SequenceOutput(NamedTuple):
    """Per-position features and the pooled whole-sequence embedding."""

    hidden: Float[Array, "seq_len dim"]
    pooled: Float[Array, " dim"]


@dataclasses.dataclass(frozen=True)
class SequenceEmbeddingConfig(Config):
    """Architecture of a `SequenceEmbedding`.

    Attributes:
        alphabet: the nucleotide letters, in one-hot column order (``"ACGU"`` for RNA).
        allow_n: whether N (a uniform one-hot row) is accepted by `one_hot`.
        n_layers: number of convolution layers (at least 2).
        hidden_channels: channels of every convolution.
        kernel_size: odd width of every convolution.
        embedding_dim: features per position after the final projection.
        dropout: dropout probability after every convolution while training.
    """

    alphabet: str = "ACGT"
    allow_n: bool = True
    n_layers: int = 3
    hidden_channels: int = 64
    kernel_size: int = 9
    embedding_dim: int = 128
    dropout: float = 0.1

    def validate(self) -> None:
        validate_alphabet(self.alphabet)
        require_positive(hidden_channels=self.hidden_channels, embedding_dim=self.embedding_dim)
        require(self.n_layers >= 2, f"n_layers must be at least 2, got {self.n_layers}")
        require(
            self.kernel_size > 0 and self.kernel_size % 2 == 1,
            f"kernel_size must be a positive odd number, got {self.kernel_size}",
        )
        require_probability(dropout=self.dropout)


class SequenceEmbedding(eqx.Module):
    """Convolutional embedding of one nucleotide sequence (see the module docstring)."""

    first: eqx.nn.Conv1d
    rest: eqx.nn.Conv1d  # array leaves stacked over n_layers - 1 layers
    projection: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    config: SequenceEmbeddingConfig = eqx.field(static=True)

    def __init__(self, config: SequenceEmbeddingConfig, *, key: PRNGKeyArray):
        first_key, rest_key, projection_key = jax.random.split(key, 3)
        channels, width = config.hidden_channels, config.kernel_size
        self.first = eqx.nn.Conv1d(
            len(config.alphabet), channels, width, padding="SAME", key=first_key
        )
        make = eqx.filter_vmap(
            lambda k: eqx.nn.Conv1d(channels, channels, width, padding="SAME", key=k)
        )
        self.rest = make(jax.random.split(rest_key, config.n_layers - 1))
        self.projection = eqx.nn.Linear(channels, config.embedding_dim, key=projection_key)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.config = config

    def one_hot(self, sequences: list[str], *, length: int | None = None) -> tuple[Array, Array]:
        """`zoo.sequence.nucleotides.one_hot` with this model's alphabet and N rule."""
        x, mask = one_hot(
            sequences, self.config.alphabet, allow_n=self.config.allow_n, length=length
        )
        return jnp.asarray(x), jnp.asarray(mask)

    def __call__(
        self,
        x: Float[Array, "seq_len alphabet"],
        mask: Bool[Array, " seq_len"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> SequenceOutput:
        """Embed one one-hot sequence.

        Args:
            x: one-hot letters (rows of zeros at padding).
            mask: True at real positions; by default the rows of `x` that are not all zero.
            key: drives dropout; needed only while training with ``dropout > 0``.

        Returns:
            `SequenceOutput` with ``hidden`` of shape (seq_len, embedding_dim) (zero at padding)
            and ``pooled``, their mean over the real positions.
        """
        if x.shape[-1] != len(self.config.alphabet):
            raise ValueError(
                f"x has {x.shape[-1]} columns per position, but the alphabet "
                f"{self.config.alphabet!r} needs {len(self.config.alphabet)}"
            )
        if mask is None:
            mask = jnp.any(x != 0, axis=-1)
        keep = mask[:, None].astype(x.dtype)
        keys = (
            [None] * self.config.n_layers
            if key is None
            else list(jax.random.split(key, self.config.n_layers))
        )

        def layer(conv: eqx.nn.Conv1d, h: Array, layer_key: PRNGKeyArray | None) -> Array:
            out = jax.nn.relu(conv(h.T).T) * keep
            return self.dropout(out, key=layer_key)

        h = layer(self.first, x, keys[0])
        params, static = eqx.partition(self.rest, eqx.is_array)
        rest_keys = None if key is None else jnp.stack(keys[1:])

        def step(h, conv_and_key):
            conv_params, conv_key = conv_and_key
            return layer(eqx.combine(conv_params, static), h, conv_key), None

        h, _ = jax.lax.scan(step, h, (params, rest_keys))
        hidden = dense(self.projection, h) * keep
        return SequenceOutput(hidden=hidden, pooled=masked_mean(hidden, mask))
