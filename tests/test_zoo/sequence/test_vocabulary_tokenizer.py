"""The published checkpoints' tokenizers: the rules and ids documented upstream
(REFERENCE_MODELS.md 2c, 3b, 5b), clear errors on bad input, and the encoder config options
that go with them."""

from __future__ import annotations

import pytest

from zoo.common.config import ConfigError
from zoo.common.transformer import TransformerConfig
from zoo.sequence.encoder import TransformerSequenceEncoderConfig
from zoo.sequence.nucleotides import SequenceError
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer


def test_nucleotide_transformer_splits_as_its_documentation_shows():
    # the example of instadeepai/nucleotide-transformer docs/nucleotide_transformer.md
    tokens = VocabularyTokenizer.from_name("nt-v2-6").tokens("ACGTGTACNTGCACGGANCGACTAGTCTGA")
    assert " ".join(tokens) == "<cls> ACGTGT A C N TGCACG G A N CGACTA GTCTGA"


def test_published_ids():
    dnabert = VocabularyTokenizer.from_name("dnabert-6")
    assert dnabert.vocab_size == 4101
    assert list(dnabert.encode("AAAAAAT")) == [2, 5, 6, 3]  # [CLS] AAAAAA AAAAAT [SEP]
    assert list(dnabert.encode("GGGGGGN")) == [2, 4100, 1, 3]  # GGGGGG, then [UNK]
    v1, v2 = VocabularyTokenizer("nt-v1", 6), VocabularyTokenizer("nt-v2", 6)
    assert (v1.vocab_size, v2.vocab_size) == (4105, 4107)
    assert list(v1.encode("AAAAAAN")) == [3, 4, 4104] and list(v2.encode("AAAAAAN")) == [3, 6, 4106]
    esm = VocabularyTokenizer.from_name("esm2")
    assert list(esm.encode("LAM")) == [0, 4, 5, 20, 2] and esm.mask_id == 32
    ids, mask = esm(["LA", "L"])
    assert ids.tolist() == [[0, 4, 5, 2], [0, 4, 2, 1]]  # padded with <pad> = 1
    assert mask.tolist() == [[True] * 4, [True] * 3 + [False]]


def test_bad_letters_and_names_are_refused_by_name():
    with pytest.raises(SequenceError, match="letter 'X' at position 2 is not one of ACGTN"):
        VocabularyTokenizer.from_name("nt-v1-6").encode("ACXT")
    with pytest.raises(SequenceError, match="letter '\\*' at position 1"):
        VocabularyTokenizer.from_name("esm2").encode("M*")
    with pytest.raises(ConfigError, match="unknown tokenizer 'dnabert-12'"):
        VocabularyTokenizer.from_name("dnabert-12")


def test_encoder_options_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="alphabet, kmer, kmer_stride and allow_n"):
        TransformerSequenceEncoderConfig(vocabulary="esm2", kmer=3)
    with pytest.raises(ConfigError, match=r"needs transformer\.rotary"):
        TransformerSequenceEncoderConfig(positions="none")
    with pytest.raises(ConfigError, match="token_dropout needs a vocabulary"):
        TransformerSequenceEncoderConfig(token_dropout=True)
    with pytest.raises(ConfigError, match="even head dimension"):
        TransformerConfig(dim=60, n_heads=4, rotary=True)
    config = TransformerSequenceEncoderConfig(vocabulary="nt-v2-6", max_len=2050)
    assert config.pad_id == 1 and config.n_tokens == 4107
    assert TransformerSequenceEncoderConfig.from_dict(config.to_dict()) == config
