"""Tokenizer and one-hot encoding of nucleotide strings."""

import numpy as np
import pytest

from zoo import NucleotideTokenizer, SequenceError, one_hot
from zoo.common.config import ConfigError
from zoo.sequence.nucleotides import CLS, PAD, SPECIAL_TOKENS, UNK


def test_single_nucleotide_round_trip():
    tokenizer = NucleotideTokenizer("ACGT")
    ids, mask = tokenizer(["ACGTacgt", "GA"])
    assert ids.shape == (2, 9) and mask.sum() == 9 + 3
    assert ids[0, 0] == CLS and ids[1, 3] == PAD
    assert "".join(tokenizer.decode(ids[0])[1:]) == "ACGTACGT"


def test_overlapping_kmers_match_sliding_windows():
    tokenizer = NucleotideTokenizer("ACGT", kmer=3, stride=1)
    sequence = "ACGTTGCA"
    tokens = tokenizer.decode(tokenizer.encode(sequence))
    assert tokens == ["[CLS]"] + [sequence[i : i + 3] for i in range(len(sequence) - 2)]
    assert tokenizer.vocab_size == len(SPECIAL_TOKENS) + 64


def test_non_overlapping_kmers_drop_the_short_tail():
    tokenizer = NucleotideTokenizer("ACGT", kmer=3, stride=3)
    assert tokenizer.decode(tokenizer.encode("ACGTTGCA")) == ["[CLS]", "ACG", "TTG"]


def test_n_becomes_unk_when_allowed_and_an_error_otherwise():
    tokenizer = NucleotideTokenizer("ACGT", kmer=2, stride=1)
    assert list(tokenizer.encode("ANC")[1:]) == [UNK, UNK]
    with pytest.raises(SequenceError, match=r"'N' at position 1.*not allowed"):
        NucleotideTokenizer("ACGT", allow_n=False).encode("ANC")


def test_unknown_letter_is_named_with_its_position():
    with pytest.raises(SequenceError, match=r"'X' at position 2"):
        NucleotideTokenizer("ACGT").encode("ACXT")
    with pytest.raises(SequenceError, match=r"'T' at position 0"):
        NucleotideTokenizer("ACGU").encode("TT")


def test_too_long_for_the_requested_length():
    with pytest.raises(SequenceError, match="more than length=3"):
        NucleotideTokenizer()(["ACGT"], length=3)


def test_bad_tokenizer_settings():
    with pytest.raises(ConfigError, match="stride"):
        NucleotideTokenizer(kmer=2, stride=3)
    with pytest.raises(ConfigError, match="repeated"):
        NucleotideTokenizer("AACG")


def test_one_hot_rows_padding_and_n():
    x, mask = one_hot(["ACN", "G"], "ACGT")
    np.testing.assert_array_equal(x[0, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(x[0, 2], [0.25] * 4)
    np.testing.assert_array_equal(x[1, 1], [0, 0, 0, 0])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False]])
