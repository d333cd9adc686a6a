"""Model cards rendered from model_cards/ templates parse with ``huggingface_hub.ModelCard``
and carry the Hub metadata and the sections the project promises; the CLI renders them."""

from __future__ import annotations

import json

import jax
import pytest
from huggingface_hub import ModelCard

import zoo
from checkpoints import CardDetails, DataSource, EvaluationResult, TrainingRecord
from checkpoints.card import CardError, render_card, validate_card
from checkpoints.catalog import CATALOG
from checkpoints.cli import main

DETAILS = CardDetails(
    summary="A 3-mer DNA encoder fine-tuned to tell Oct4 from MafK ChIP-seq peaks.",
    license="gpl-3.0",
    base_model="biozoo/dna-encoder-small",
    tags=("dna", "chip-seq"),
    reference="biozoo/oct4-mafk@0123456789abcdef0123456789abcdef01234567",
    training_data=(
        DataSource(
            "Oct4 ChIP-seq peaks",
            url="https://pypi.org/project/janggu/0.10.2/",
            licence="GPL-3.0",
            sha256="effef1417ad2ca12514d5a4fe72741aaada7b29c16553655c4ed84ad83640e82",
            hub_id="biozoo/janggu-peaks",
        ),
    ),
    training=TrainingRecord(steps=1200, examples_seen=4_915_200, final_loss=0.3127, hardware="CPU"),
    evaluation=(EvaluationResult("text-classification", "janggu Oct4 vs MafK", "accuracy", 0.91),),
    limitations="Trained on 200 bp mouse peaks only.",
)


def encoder() -> zoo.TransformerSequenceEncoder:
    return zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(kmer=3), key=jax.random.key(0)
    )


def test_a_full_card_parses_with_the_hub_library_and_says_everything(tmp_path):
    model = encoder()
    folder = zoo.save_pretrained(model, tmp_path / "ckpt", card=DETAILS)
    text = (folder / "README.md").read_text()
    card = ModelCard(text, ignore_metadata_errors=False)
    data = card.data.to_dict()
    assert data["library_name"] == "biozoo" and data["license"] == "gpl-3.0"
    assert data["tags"] == ["biozoo", "TransformerSequenceEncoder", "dna", "chip-seq"]
    assert data["datasets"] == ["biozoo/janggu-peaks"]
    assert data["metrics"] == ["accuracy"] and data["base_model"] == DETAILS.base_model
    assert data["pipeline_tag"] == "feature-extraction"
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.task_type) == (
        "accuracy",
        0.91,
        "text-classification",
    )
    for section in (
        "## How to load it",
        "## Training data",
        "## Configuration",
        "## Training procedure",
        "## Evaluation results",
        "## Limitations",
    ):
        assert section in card.text
    assert f'zoo.from_pretrained("{DETAILS.reference}")' in card.text
    assert DETAILS.training_data[0].sha256 in card.text and "4,915,200" in card.text
    assert '"kmer": 3' in card.text and "0.3127" in card.text
    assert validate_card(text).data.license == "gpl-3.0"


def test_the_default_card_is_valid_and_says_what_is_not_recorded(tmp_path):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt")
    card = validate_card((folder / "README.md").read_text())
    assert card.data.eval_results is None and "_Not recorded._" in card.text


def test_invalid_cards_are_refused_by_name():
    with pytest.raises(CardError, match="does not parse"):
        validate_card("---\nlicense: [unclosed\n---\n# x\n")
    with pytest.raises(CardError, match="library_name is None"):
        validate_card("---\nlicense: mit\ntags: [biozoo]\n---\n# x\n")
    good = render_card("TransformerSequenceEncoder", encoder().config)
    with pytest.raises(CardError, match="license is missing"):
        validate_card(good.replace("license: apache-2.0\n", ""))


def test_cli_card_renders_details_and_ls_lists_the_catalog(tmp_path, capsys):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt")
    details = {
        "license": "mit",
        "training": {"steps": 7, "examples_seen": 700, "examples_unit": "cells"},
        "evaluation": [
            {"task": "fill-mask", "dataset": "held-out", "metric": "loss", "value": 1.5}
        ],
    }
    (tmp_path / "details.json").write_text(json.dumps(details))
    assert main(["card", str(folder), "--details", str(tmp_path / "details.json"), "--write"]) == 0
    printed = capsys.readouterr().out
    assert "cells seen: 700" in printed and printed == (folder / "README.md").read_text() + "\n"
    assert validate_card(printed).data.license == "mit"
    assert main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in CATALOG)
    assert main(["card", str(tmp_path)]) == 1
    assert "has no config.json" in capsys.readouterr().err
