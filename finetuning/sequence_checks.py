"""Checking a user's sequences against the model that will read them: its alphabet (and
whether N is allowed) and the longest sequence it takes, optionally truncating.

A `zoo.TransformerSequenceEncoder` reads at most ``max_len`` tokens, ``[CLS]`` included; a
sequence of ``L`` letters gives ``1 + floor((L - k) / stride) + 1`` tokens, so it takes at
most ``(max_len - 2) * stride + k`` letters. The convolutional `zoo.SequenceEmbedding` takes
any length.
"""

from __future__ import annotations

import os

import equinox as eqx
import pandas as pd

from finetuning.user_data import UserDataError, location
from zoo.sequence.encoder import TransformerSequenceEncoder
from zoo.sequence.nucleotides import SequenceError, letter_codes


def longest_sequence(backbone: eqx.Module) -> int | None:
    """The most letters `backbone` reads in one sequence (None: no limit)."""
    if not isinstance(backbone, TransformerSequenceEncoder):
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
