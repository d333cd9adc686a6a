"""Checking a user's sequences against the model that will read them: its alphabet (and
whether N is allowed) and the longest sequence it takes, optionally truncating.

A `zoo.TransformerSequenceEncoder` reads at most ``max_len`` tokens, ``[CLS]`` included; a
sequence of ``L`` letters gives ``1 + floor((L - k) / stride) + 1`` tokens, so it takes at
most ``(max_len - 2) * stride + k`` letters. An encoder imported with its checkpoint's own
tokenizer (`zoo.sequence.vocabulary_tokenizer`: DNABERT, Nucleotide Transformer, ESM-2's
protein letters) is checked by that tokenizer: its alphabet, and at most ``max_len`` tokens
(truncation keeps the longest prefix that fits). The convolutional `zoo.SequenceEmbedding`
takes any length.
"""

from __future__ import annotations

import os

import equinox as eqx
import pandas as pd

from finetuning.user_data import UserDataError, location
from zoo.sequence.encoder import TransformerSequenceEncoder
from zoo.sequence.nucleotides import SequenceError, letter_codes
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer


def longest_sequence(backbone: eqx.Module) -> int | None:
    """The most letters `backbone` reads in one sequence (None: no limit, or a checkpoint
    tokenizer's, whose limit is in tokens: `fitted_prefix`)."""
    if not isinstance(backbone, TransformerSequenceEncoder) or backbone.config.vocabulary:
        return None
    config = backbone.config
    return (config.max_len - 2) * config.kmer_stride + config.kmer


def checked_sequences(
    backbone: eqx.Module, batch: pd.DataFrame, path: str | os.PathLike, *, truncate: bool = False
) -> list[str]:
    """The sequences of `batch` (a frame from `finetuning.user_data.sequence_batches`),
    checked against `backbone`, cut to its longest sequence when `truncate` is set.

    Raises:
        UserDataError: naming the file, the row and the problem: a letter outside the
            model's alphabet (or N where N is not allowed), or a sequence longer than the
            model takes while `truncate` is off.
    """
    config = backbone.config
    longest = longest_sequence(backbone)
    sequences = []
    for row, sequence in zip(batch["row"], batch["sequence"].astype(str), strict=True):
        sequence = sequence.strip()
        try:
            if getattr(config, "vocabulary", None):
                sequence = fitted_prefix(config.tokenizer, sequence, config.max_len, truncate)
            else:
                letter_codes(sequence, config.alphabet, config.allow_n)
        except SequenceError as error:
            raise UserDataError(f"{location(path, row)}: {error}") from None
        if longest is not None and len(sequence) > longest:
            if not truncate:
                raise UserDataError(
                    f"{location(path, row)}: the sequence has {len(sequence)} letters, more "
                    f"than the {longest} the model takes; shorten it or pass --truncate"
                )
            sequence = sequence[:longest]
        sequences.append(sequence)
    return sequences


def fitted_prefix(
    tokenizer: VocabularyTokenizer, sequence: str, max_len: int, truncate: bool
) -> str:
    """`sequence` checked by `tokenizer` (its letters) and, when it makes more than `max_len`
    tokens, cut to the longest prefix that fits (`truncate`) or refused.

    Raises:
        SequenceError: a letter outside the tokenizer's alphabet, or too many tokens while
            `truncate` is off.
    """
    n_tokens = len(tokenizer.tokens(sequence))
    if n_tokens <= max_len:
        return sequence
    if not truncate:
        raise SequenceError(
            f"the sequence makes {n_tokens} tokens, more than the {max_len} the model takes; "
            "shorten it or pass --truncate"
        )
    end = min(len(sequence), max_len * tokenizer.kmer)  # no token holds more letters
    while len(tokenizer.tokens(sequence[:end])) > max_len:
        end -= 1
    return sequence[:end]
