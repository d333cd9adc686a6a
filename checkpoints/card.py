"""Model cards: the ``README.md`` of a checkpoint, rendered from ``model_cards/`` templates.

The card's YAML header is Hub metadata built with `huggingface_hub.ModelCardData`
(``library_name``, ``tags`` with the architecture, ``license``, ``datasets``, ``metrics``,
``base_model``, ``pipeline_tag`` and the evaluation results as ``model-index``). The body
says what the model is, how to load it, its training data and provenance, configuration,
training procedure, evaluation results and limitations. Facts that only the training run
knows are passed in as `CardDetails`; nothing secret (such as a token) is ever an input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo.common.config import Config

TEMPLATE = "model_card.md"
PIPELINE_TAGS = {
    "TransformerSequenceEncoder": "feature-extraction",
    "SequenceEmbedding": "feature-extraction",
    "DifferentiableFoundationModel": "feature-extraction",
}
NOT_RECORDED = "_Not recorded._"


class CardError(ValueError):
    """A model card does not parse or its metadata is incomplete."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One training data set and where it came from.

    Attributes:
        name: what it is called.
        url: where it was obtained.
        licence: the licence it is distributed under.
        sha256: digest of the file used, so others can check they have the same bytes.
        hub_id: its Hub dataset id, listed in the card's ``datasets`` metadata.
        contents: what it holds, e.g. ``"1 record, 69,999,930 bases"``.
    """

    name: str
    url: str | None = None
    licence: str | None = None
    sha256: str | None = None
    hub_id: str | None = None
    contents: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        examples_seen: tokens or cells processed.
        examples_unit: ``"tokens"`` or ``"cells"``.
        final_loss: the last training loss.
        hardware: the devices it ran on, e.g. ``"8 x H100"``.
        objective: what the loss measures.
        figures: further results of the run as (name, value) pairs, e.g. the final
            validation loss or the MFU.
        loss_curve: file name of a loss-curve image stored beside the card.
        settings: the run's configuration (JSON values), shown verbatim.
    """

    steps: int
    examples_seen: int
    examples_unit: str = "tokens"
    final_loss: float | None = None
    hardware: str | None = None
    objective: str | None = None
    figures: tuple[tuple[str, float | int | str], ...] = ()
    loss_curve: str | None = None
    settings: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """One evaluation figure (a ``model-index`` entry on the Hub).

    Attributes:
        task: the Hub task type, e.g. ``"text-classification"``.
        dataset: the evaluation data set's name.
        metric: the metric, e.g. ``"accuracy"``.
        value: the figure.
        dataset_id: its Hub dataset id (default: `dataset`).
    """

    task: str
    dataset: str
    metric: str
    value: float
    dataset_id: str | None = None


@dataclasses.dataclass(frozen=True)
class CardDetails:
    """What a card says beyond the config (all optional).

    Attributes:
        summary: what the model is, in a sentence or two.
        license: an SPDX-style Hub licence id.
        base_model: the Hub id this model was fine-tuned from.
        pipeline_tag: the Hub task; by default one that fits the architecture, if any.
        tags: extra Hub tags.
        reference: how to load it (``org/name@commit`` or a catalog name) in the snippet.
        training_data: the data sets it was trained on, with provenance.
        training: the training run's record.
        evaluation: evaluation results.
        limitations: known limitations.
    """

    summary: str | None = None
    license: str = "apache-2.0"
    base_model: str | None = None
    pipeline_tag: str | None = None
    tags: tuple[str, ...] = ()
    reference: str | None = None
    training_data: tuple[DataSource, ...] = ()
    training: TrainingRecord | None = None
    evaluation: tuple[EvaluationResult, ...] = ()
    limitations: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardDetails:
        """Build from plain JSON values (as ``biozoo card --details FILE`` reads)."""
        data = dict(data)
        data["tags"] = tuple(data.get("tags", ()))
        data["training_data"] = tuple(DataSource(**d) for d in data.get("training_data", ()))
        data["evaluation"] = tuple(EvaluationResult(**e) for e in data.get("evaluation", ()))
        if data.get("training") is not None:
            training = dict(data["training"])
            training["figures"] = tuple(tuple(pair) for pair in training.get("figures", ()))
            data["training"] = TrainingRecord(**training)
        return cls(**data)


def metadata(architecture: str, details: CardDetails) -> ModelCardData:
    """The card's Hub metadata."""
    evaluation = [
        EvalResult(
            task_type=e.task,
            dataset_type=e.dataset_id or e.dataset,
            dataset_name=e.dataset,
            metric_type=e.metric,
            metric_value=e.value,
        )
        for e in details.evaluation
    ]
    return ModelCardData(
        library_name="biozoo",
        license=details.license,
        tags=["biozoo", architecture, *details.tags],
        datasets=[d.hub_id for d in details.training_data if d.hub_id] or None,
        metrics=sorted({e.metric for e in details.evaluation}) or None,
        base_model=details.base_model,
        pipeline_tag=details.pipeline_tag or PIPELINE_TAGS.get(architecture),
        model_name=(details.reference or architecture) if evaluation else None,
        eval_results=evaluation or None,
    )


def render_card(architecture: str, config: Config, details: CardDetails | None = None) -> str:
    """The Markdown model card of a checkpoint of `architecture` with `config`."""
    details = details or CardDetails()
    template = resources.files("model_cards").joinpath(TEMPLATE).read_text()
    return string.Template(template).substitute(
        metadata=metadata(architecture, details).to_yaml(),
        title=details.reference or architecture,
        summary=details.summary or f"A `{architecture}` model of the biozoo model zoo.",
        reference=details.reference or "path/to/this/folder",
        architecture=architecture,
        training_data=_training_data(details.training_data),
        config=json.dumps(config.to_dict(), indent=2),
        training_procedure=_training_procedure(details.training),
        evaluation=_evaluation(details.evaluation),
        limitations=details.limitations or NOT_RECORDED,
    )


def validate_card(text: str) -> ModelCard:
    """Parse `text` as a Hub model card and check its metadata.

    Raises:
        CardError: if the YAML does not parse or lacks the library, tags or licence.
    """
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as error:  # huggingface_hub raises bare ValueErrors and YAML errors
        raise CardError(f"the model card does not parse: {error}") from None
    data = card.data
    problems = []
    if data.library_name != "biozoo":
        problems.append(f"library_name is {data.library_name!r}, expected 'biozoo'")
    if not data.tags or "biozoo" not in data.tags:
        problems.append("tags must include 'biozoo' and the architecture")
    if not data.license:
        problems.append("license is missing")
    if problems:
        raise CardError("model card metadata: " + "; ".join(problems))
    return card


def _training_data(sources: tuple[DataSource, ...]) -> str:
    if not sources:
        return NOT_RECORDED
    rows = [
        "| data set | contents | source | licence | SHA-256 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in sources:
        digest = f"`{s.sha256}`" if s.sha256 else "—"
        row = (s.name, s.contents or "—", s.url or "—", s.licence or "—", digest)
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def _training_procedure(record: TrainingRecord | None) -> str:
    if record is None:
        return NOT_RECORDED
    lines = [f"Objective: {record.objective}.", ""] if record.objective else []
    lines += [
        f"- steps: {record.steps:,}",
        f"- {record.examples_unit} seen: {record.examples_seen:,}",
        f"- final training loss: {_figure(record.final_loss)}",
        *(f"- {name}: {_figure(value)}" for name, value in record.figures),
        f"- hardware: {record.hardware or '—'}",
    ]
    if record.loss_curve:
        lines += ["", f"![loss curve]({record.loss_curve})"]
    if record.settings is not None:
        lines += ["", "Run settings:", "", "```json", json.dumps(record.settings, indent=2), "```"]
    return "\n".join(lines)


def _figure(value: float | int | str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else value


def _evaluation(results: tuple[EvaluationResult, ...]) -> str:
    if not results:
        return NOT_RECORDED
    rows = ["| task | data set | metric | value |", "| --- | --- | --- | --- |"]
    rows += [f"| {e.task} | {e.dataset} | {e.metric} | {e.value:.4g} |" for e in results]
    return "\n".join(rows)
