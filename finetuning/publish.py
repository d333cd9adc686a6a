"""Publishing a pretrained checkpoint into the catalog (``python -m finetuning.publish``).

Takes the model folder a pretraining run exported, fine-tunes it on its downstream task
next to a from-scratch model of the same architecture at the same budget, and writes
``finetuning/published/<name>/`` with the weights, the run's card extended by the
downstream results (stated as measured, whichever way they go), and ``reference.json``: a
fixed real input and the embedding the model gives it, so an install can be checked. It
prints the `checkpoints.catalog.CatalogEntry` to add to the catalog.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from checkpoints import from_pretrained
from checkpoints.pretrained import CONFIG_FILE
from finetuning.backbones import same_architecture_from_scratch
from finetuning.run import run_fine_tune
from finetuning.tasks import TASKS, Task
from finetuning.train import FineTuneConfig
from pretraining.sources import sha256_of

PUBLISHED = Path(__file__).resolve().parent / "published"
REFERENCE_FILE = "reference.json"
COPIED = (
    "config.json",
    "model.safetensors",
    "README.md",
    "loss_curve.png",
    "training_summary.json",
)


def reference_embedding(model: eqx.Module, inputs: list) -> np.ndarray:
    """The pooled (sequence) or cell embedding of each input, in inference mode."""
    model = eqx.nn.inference_mode(model)
    if hasattr(model, "tokenizer") and hasattr(model.tokenizer, "encode"):
        ids, mask = model.tokenizer(inputs)
        return np.asarray(jax.vmap(model)(jnp.asarray(ids), jnp.asarray(mask)).pooled)
    return np.asarray(jax.vmap(model)(jnp.asarray(inputs, jnp.float32)).cell_embedding)


def reference_inputs(task: Task, n: int = 4) -> list:
    """The first `n` test inputs of the task, as JSON values."""
    inputs = task.test.inputs[:n]
    return list(inputs) if task.modality == "dna" else np.asarray(inputs).astype(int).tolist()


def downstream_section(
    task: Task, results: dict[str, dict[str, float]], config: FineTuneConfig
) -> str:
    """Markdown of the downstream comparison, with an honest verdict."""
    metrics = list(next(iter(results.values())))
    lines = [
        "",
        "## Downstream results",
        "",
        f"Fine-tuned on `{task.name}` ({', '.join(task.classes)}; {task.provenance}) with the "
        f"`{config.strategy}` strategy for at most {config.max_steps} steps of "
        f"{config.batch_size}, early stopping on the validation split; the baseline is the "
        "same architecture initialised at random, with the same budget. Test split:",
        "",
        "| start | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += [
        f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in metrics) + " |"
        for name, r in results.items()
    ]
    gain = results["pretrained"]["mcc"] - results["from scratch"]["mcc"]
    verdict = (
        f"Pretraining helps here: MCC {gain:+.3f} over the baseline."
        if gain > 0.02
        else f"Pretraining does not clearly help at this scale: MCC {gain:+.3f} over the baseline."
    )
    return "\n".join([*lines, "", verdict, ""])


def publish(
    model_folder: Path, name: str, task_name: str, config: FineTuneConfig, work: Path
) -> dict:
    """Publish `model_folder` as `name` (see the module docstring); return the catalog facts."""
    task = TASKS[task_name]()
    model = from_pretrained(model_folder)
    results = {}
    for label, backbone in (
        ("pretrained", model),
        ("from scratch", same_architecture_from_scratch(model)),
    ):
        result, _ = run_fine_tune(
            task, backbone, config, work / label.replace(" ", "-"), base_model=name
        )
        results[label] = result.test
    target = PUBLISHED / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for file in COPIED:
        if (model_folder / file).exists():
            shutil.copy2(model_folder / file, target / file)
    with open(target / "README.md", "a") as card:
        card.write(downstream_section(task, results, config))
    inputs = reference_inputs(task)
    embedding = reference_embedding(from_pretrained(target), inputs)
    (target / REFERENCE_FILE).write_text(
        json.dumps({"inputs": inputs, "embedding": embedding.tolist()}) + "\n"
    )
    return {
        "name": name,
        "sha256": {f: sha256_of(target / f) for f in (CONFIG_FILE, "model.safetensors")},
        "folder": f"finetuning/published/{name}",
        "downstream": results,
    }


def main() -> None:
    """Command line: ``python -m finetuning.publish MODEL_FOLDER NAME TASK``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_folder", type=Path)
    parser.add_argument("name")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--work", type=Path, default=Path("outputs/publish"))
    args = parser.parse_args()
    config = FineTuneConfig(strategy=args.strategy, max_steps=args.steps, eval_every=50, patience=4)
    print(json.dumps(publish(args.model_folder, args.name, args.task, config, args.work), indent=2))


if __name__ == "__main__":
    main()
