"""The tokenizers of published sequence checkpoints, with those checkpoints' own token ids.

Four schemes, named as `TransformerSequenceEncoderConfig.vocabulary` names them:

- ``"dnabert-K"`` (DNABERT, Ji et al., 2021; published for K = 3..6): ``[PAD] [UNK] [CLS]
  [SEP] [MASK]`` (ids 0-4), then the 4^K k-mers in product order over ``A T C G``. A
  sequence becomes ``[CLS]``, its overlapping K-mers (stride 1; a K-mer holding N is
  ``[UNK]``), ``[SEP]``.
- ``"nt-v1-K"`` and ``"nt-v2-K"`` (Nucleotide Transformer, Dalla-Torre et al., 2024; K = 6
  for the published models): ``<unk> <pad> <mask> <cls>`` (v2 then ``<eos> <bos>``), the
  4^K k-mers over ``A T C G``, then ``A T C G N``. The sequence is cut at every N; each
  N-free piece is read left to right in non-overlapping K-mers, a remainder shorter than K
  as single letters; each N is its own token; ``<cls>`` is prepended and nothing appended.
- ``"esm2"`` (ESM-2, Lin et al., 2023): the 33 tokens ``<cls> <pad> <eos> <unk>``, 25 amino
  acid letters, ``. -``, ``<null_1> <mask>``; ``<cls>``, one token per residue, ``<eos>``.

K is 2 to 9 for every DNA scheme. Letters are case-insensitive. A letter outside the
scheme's alphabet (``ACGTN`` for DNA, the 27 residue symbols for protein) is an error naming
it and its position.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Sequence

import numpy as np

from zoo.common.config import require, require_choice
from zoo.sequence.nucleotides import SequenceError, padded_batch

SCHEMES = ("dnabert", "nt-v1", "nt-v2", "esm2")
KMER_ORDER = "ATCG"  # DNABERT and NT enumerate k-mers over this letter order
PROTEIN_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
SPECIAL_TOKENS = {
    "dnabert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "nt-v1": ("<unk>", "<pad>", "<mask>", "<cls>"),
    "nt-v2": ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"),
    "esm2": ("<cls>", "<pad>", "<eos>", "<unk>"),
}
_NAME = re.compile(r"^(dnabert|nt-v1|nt-v2)-([2-9])$|^esm2$")


@dataclasses.dataclass(frozen=True)
class VocabularyTokenizer:
    """A published checkpoint's tokenizer (see the module docstring).

    Attributes:
        scheme: ``"dnabert"``, ``"nt-v1"``, ``"nt-v2"`` or ``"esm2"``.
        kmer: letters per k-mer token (1 for ``"esm2"``).
    """

    scheme: str
    kmer: int = 1

    def __post_init__(self) -> None:
        require_choice("scheme", self.scheme, SCHEMES)
        if self.scheme == "esm2":
            require(
                self.kmer == 1, f"the esm2 tokenizer reads single residues, not kmer={self.kmer}"
            )
        else:
            require(2 <= self.kmer <= 9, f"kmer must be 2 to 9, got {self.kmer}")

    @classmethod
    def from_name(cls, name: str) -> VocabularyTokenizer:
        """The tokenizer called `name`: ``"dnabert-K"``, ``"nt-v1-K"``, ``"nt-v2-K"`` or
        ``"esm2"``; raises `ConfigError` for any other name."""
        match = _NAME.match(name)
        require(
            match is not None,
            f"unknown tokenizer {name!r}: expected dnabert-K, nt-v1-K, nt-v2-K (K = 2..9) or esm2",
        )
        return cls("esm2") if name == "esm2" else cls(match.group(1), int(match.group(2)))

    @property
    def name(self) -> str:
        """The name `from_name` reads back."""
        return "esm2" if self.scheme == "esm2" else f"{self.scheme}-{self.kmer}"

    @property
    def vocab(self) -> tuple[str, ...]:
        """All tokens, indexed by id (the lines of the checkpoint's ``vocab.txt``)."""
        return _vocabulary(self.scheme, self.kmer)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self.vocab.index("[PAD]" if self.scheme == "dnabert" else "<pad>")

    @property
    def mask_id(self) -> int:
        """Id of the masked-language-model mask token."""
        return self.vocab.index("[MASK]" if self.scheme == "dnabert" else "<mask>")

    def tokens(self, sequence: str) -> list[str]:
        """The tokens of one sequence, special tokens included."""
        sequence = sequence.upper()
        if self.scheme == "esm2":
            _check_letters(sequence, PROTEIN_LETTERS, self.name)
            return ["<cls>", *sequence, "<eos>"]
        _check_letters(sequence, "ACGTN", self.name)
        k = self.kmer
        if self.scheme == "dnabert":
            kmers = [sequence[i : i + k] for i in range(len(sequence) - k + 1)]
            return ["[CLS]", *(("[UNK]" if "N" in m else m) for m in kmers), "[SEP]"]
        out = ["<cls>"]
        for index, piece in enumerate(sequence.split("N")):
            if index:
                out.append("N")
            whole = len(piece) - len(piece) % k
            out += [piece[i : i + k] for i in range(0, whole, k)] + list(piece[whole:])
        return out

    def encode(self, sequence: str) -> np.ndarray:
        """Token ids of one sequence, special tokens included; int32 of shape (n_tokens,)."""
        index = _index(self.scheme, self.kmer)
        return np.array([index[t] for t in self.tokens(sequence)], np.int32)

    def __call__(
        self, sequences: Sequence[str], *, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize a batch and right-pad it with the scheme's padding token.

        Returns:
            ``(ids, mask)`` of shape ``(batch, length)``: int32 ids and True at real tokens.
            ``length`` defaults to the longest tokenisation.

        Raises:
            SequenceError: on a letter outside the alphabet, or a tokenisation longer than
                ``length``.
        """
        return padded_batch([self.encode(s) for s in sequences], self.pad_id, length)

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The tokens of `ids`, padding dropped."""
        vocab = self.vocab
        return [vocab[int(i)] for i in ids if int(i) != self.pad_id]


@functools.cache
def _vocabulary(scheme: str, kmer: int) -> tuple[str, ...]:
    if scheme == "esm2":
        return SPECIAL_TOKENS["esm2"] + tuple(PROTEIN_LETTERS) + ("<null_1>", "<mask>")
    kmers = tuple("".join(p) for p in itertools.product(KMER_ORDER, repeat=kmer))
    letters = () if scheme == "dnabert" else (*KMER_ORDER, "N")
    return SPECIAL_TOKENS[scheme] + kmers + letters


@functools.cache
def _index(scheme: str, kmer: int) -> dict[str, int]:
    return {token: i for i, token in enumerate(_vocabulary(scheme, kmer))}


def _check_letters(sequence: str, alphabet: str, name: str) -> None:
    """Raise `SequenceError` naming the first letter of `sequence` outside `alphabet`."""
    bad = re.search(f"[^{re.escape(alphabet)}]", sequence)
    if bad:
        raise SequenceError(
            f"letter {bad.group()!r} at position {bad.start()} is not one of {alphabet} "
            f"(the {name} tokenizer)"
        )
