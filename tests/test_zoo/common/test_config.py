"""Configs are validated, frozen and round-trip through JSON."""

import dataclasses
import json

import pytest

import zoo
from zoo.common.config import ConfigError

CONFIGS = [
    zoo.SequenceEmbeddingConfig,
    zoo.TransformerSequenceEncoderConfig,
    zoo.GeneTokenizerConfig,
    zoo.DifferentiableFoundationModelConfig,
]


@pytest.mark.parametrize("config_class", CONFIGS)
def test_json_round_trip(config_class):
    config = config_class()
    again = config_class.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__setattr__("pooling", "x")


def test_nested_config_round_trip():
    config = zoo.TransformerSequenceEncoderConfig(
        transformer=zoo.TransformerConfig(dim=32, n_heads=2, norm="post"),
        kmer=3,
        positions="learned",
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["transformer"]["norm"] == "post"
    assert zoo.TransformerSequenceEncoderConfig.from_dict(data) == config


def test_unknown_field_is_named():
    data = zoo.SequenceEmbeddingConfig().to_dict() | {"n_filters": 3}
    with pytest.raises(ConfigError, match="n_filters"):
        zoo.SequenceEmbeddingConfig.from_dict(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: zoo.TransformerConfig(dim=30, n_heads=4), "must divide dim"),
        (lambda: zoo.TransformerConfig(dropout=1.0), "dropout"),
        (lambda: zoo.TransformerConfig(norm="middle"), "norm"),
        (lambda: zoo.SequenceEmbeddingConfig(kernel_size=4), "kernel_size"),
        (lambda: zoo.GeneTokenizerConfig(n_genes=10, max_tokens=20), "max_tokens"),
        (lambda: zoo.DifferentiableFoundationModelConfig(mask_ratio=-0.1), "mask_ratio"),
        (lambda: zoo.TransformerSequenceEncoderConfig(pooling="max"), "pooling"),
    ],
)
def test_invalid_values_are_named(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
