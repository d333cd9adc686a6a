"""Turning DNA/RNA strings into model inputs: one-hot matrices and (k-mer) token ids.

Letters are case-insensitive (soft-masked genome sequence is lower case). ``N`` stands for
an unknown base: where it is allowed it becomes a uniform row in a one-hot matrix and the
``[UNK]`` token in a tokenisation; where it is not, it is an error, as is any letter outside
the alphabet. Errors name the letter and its position.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from zoo.common.config import require, require_positive

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[MASK]", "[UNK]")
PAD, CLS, MASK, UNK = range(len(SPECIAL_TOKENS))


class SequenceError(ValueError):
    """A nucleotide sequence holds a letter the model cannot read, or is too long."""


def validate_alphabet(alphabet: str) -> None:
    """Raise `ConfigError` unless `alphabet` is non-empty, upper case, without repeats or N."""
    require(len(alphabet) > 0, "alphabet must not be empty")
    require(alphabet == alphabet.upper(), f"alphabet must be upper case, got {alphabet!r}")
    require(len(set(alphabet)) == len(alphabet), f"alphabet has repeated letters: {alphabet!r}")
    require("N" not in alphabet, "alphabet must not contain N; allow it with allow_n=True")


def letter_codes(sequence: str, alphabet: str, allow_n: bool) -> np.ndarray:
    """Index of each letter in `alphabet`, with ``len(alphabet)`` for N.

    Raises:
        SequenceError: naming the first letter that is not allowed and its position.
    """
    table = np.full(256, -1, np.int64)
    for index, letter in enumerate(alphabet):
        table[ord(letter)] = table[ord(letter.lower())] = index
    if allow_n:
        table[ord("N")] = table[ord("n")] = len(alphabet)
    raw = np.frombuffer(sequence.encode("latin-1", errors="replace"), np.uint8)
    codes = table[raw]
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        position = int(bad[0])
        allowed = alphabet + (" or N" if allow_n else " (N is not allowed)")
        raise SequenceError(
            f"letter {sequence[position]!r} at position {position} is not a nucleotide of {allowed}"
        )
    return codes


def one_hot(
    sequences: Sequence[str],
    alphabet: str = "ACGT",
    *,
    allow_n: bool = True,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One-hot encode and right-pad a batch of sequences.

    Returns:
        ``(x, mask)``: ``x`` of shape ``(batch, length, len(alphabet))`` float32, where N is
        the uniform row ``1/len(alphabet)`` and padding is all zeros; ``mask`` of shape
        ``(batch, length)``, True at real positions. ``length`` defaults to the longest
        sequence.
    """
    length = max((len(s) for s in sequences), default=0) if length is None else length
    x = np.zeros((len(sequences), length, len(alphabet)), np.float32)
    mask = np.zeros((len(sequences), length), bool)
    rows = np.vstack(
        [
            np.eye(len(alphabet), dtype=np.float32),
            np.full(len(alphabet), 1 / len(alphabet), np.float32),
        ]
    )
    for i, sequence in enumerate(sequences):
        if len(sequence) > length:
            raise SequenceError(
                f"sequence {i} has {len(sequence)} letters, more than length={length}"
            )
        x[i, : len(sequence)] = rows[letter_codes(sequence, alphabet, allow_n)]
        mask[i, : len(sequence)] = True
    return x, mask


def padded_batch(
    encoded: Sequence[np.ndarray], pad_id: int, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token-id arrays right-padded with `pad_id` into one batch.

    Returns:
        ``(ids, mask)`` of shape ``(batch, length)``: int32 ids and True at real tokens.
        ``length`` defaults to the longest array.

    Raises:
        SequenceError: naming an array longer than ``length``.
    """
    length = max((len(e) for e in encoded), default=1) if length is None else length
    ids = np.full((len(encoded), length), pad_id, np.int32)
    mask = np.zeros((len(encoded), length), bool)
    for i, e in enumerate(encoded):
        if len(e) > length:
            raise SequenceError(f"sequence {i} gives {len(e)} tokens, more than length={length}")
        ids[i, : len(e)] = e
        mask[i, : len(e)] = True
    return ids, mask


@dataclasses.dataclass(frozen=True)
class NucleotideTokenizer:
    """Single-nucleotide or k-mer tokenizer with BERT-style special tokens.

    The vocabulary is the special tokens ``[PAD] [CLS] [MASK] [UNK]`` (ids 0-3) followed by
    every k-mer over `alphabet` in lexicographic order. A sequence becomes ``[CLS]`` followed
    by the k-mers starting at positions ``0, stride, 2*stride, ...`` (``stride=1``: overlapping,
    as DNABERT; ``stride=kmer``: non-overlapping); a trailing piece shorter than k is dropped.
    A k-mer containing N is ``[UNK]``.
    """

    alphabet: str = "ACGT"
    kmer: int = 1
    stride: int = 1
    allow_n: bool = True

    def __post_init__(self) -> None:
        validate_alphabet(self.alphabet)
        require_positive(kmer=self.kmer, stride=self.stride)
        require(
            self.stride <= self.kmer, f"stride ({self.stride}) must not exceed kmer ({self.kmer})"
        )

    @property
    def vocab(self) -> tuple[str, ...]:
        """All tokens, indexed by id."""
        kmers = ("".join(p) for p in itertools.product(self.alphabet, repeat=self.kmer))
        return SPECIAL_TOKENS + tuple(kmers)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(SPECIAL_TOKENS) + len(self.alphabet) ** self.kmer

    def encode(self, sequence: str) -> np.ndarray:
        """Token ids of one sequence, starting with ``[CLS]``; int32 of shape (n_tokens,)."""
        codes = letter_codes(sequence, self.alphabet, self.allow_n)
        starts = np.arange(0, len(codes) - self.kmer + 1, self.stride)
        if starts.size == 0:
            return np.array([CLS], np.int32)
        windows = codes[starts[:, None] + np.arange(self.kmer)]
        base = len(self.alphabet)
        ids = windows @ (base ** np.arange(self.kmer - 1, -1, -1)) + len(SPECIAL_TOKENS)
        unknown = (windows == base).any(axis=1)
        return np.concatenate([[CLS], np.where(unknown, UNK, ids)]).astype(np.int32)

    def __call__(
        self, sequences: Sequence[str], *, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and right-pad a batch with ``[PAD]``.

        Returns:
            ``(ids, mask)`` of shape ``(batch, length)``: int32 ids and True at real tokens.
            ``length`` defaults to the longest tokenisation.

        Raises:
            SequenceError: on a letter that is not allowed, or a tokenisation longer than
                ``length``.
        """
        return padded_batch([self.encode(s) for s in sequences], PAD, length)

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The tokens of `ids`, padding dropped."""
        vocab = self.vocab
        return [vocab[int(i)] for i in ids if int(i) != PAD]
