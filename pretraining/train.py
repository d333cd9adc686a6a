"""The pretraining loop: read the corpus, place the model on the mesh, train with periodic
validation and checkpoints, and export the result.

`train` is what ``python -m pretraining dna|expression`` runs. Its outputs, under ``out``:

* ``checkpoints/``: Orbax training state (`pretraining.state`); ``--resume`` continues
  from the newest, step for step as if never interrupted (the data and randomness of a
  step depend only on the seed and the step number). A resume must repeat the saved run's
  settings, ``--steps`` included (it sets the learning-rate schedule); a changed setting is
  refused with `RunError` naming it and both values (`RunConfig.changes_from`);
* ``metrics.jsonl``: one JSON object per step (loss, learning rate, gradient norm,
  throughput, MFU) and per validation;
* ``model/``: the `zoo.save_pretrained` folder with a model card, ``loss_curve.png`` and
  ``training_summary.json``; an expression model's folder also holds its gene vocabulary,
  ``genes.tsv`` (`checkpoints.read_genes`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
from tqdm import tqdm

from pretraining.dna_data import VALIDATION
from pretraining.mesh import describe, make_mesh
from pretraining.model_card import FINAL_TRAINING_LOSS, LOSS_CURVE, card_details, plot_loss_curve
from pretraining.objectives import summarise
from pretraining.presets import PRESETS
from pretraining.run_config import RunConfig
from pretraining.sharding import check_heads
from pretraining.state import TrainingCheckpoints, abstract_state
from pretraining.steps import CompiledSteps, check_batch_size
from pretraining.tasks import Task, build_task
from pretraining.throughput import peak_flops
from zoo.registry import architecture_of

METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "model"


class RunError(RuntimeError):
    """The output folder holds a run that this command may not continue."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log; a step logged twice (before and after a resume) keeps
    its last record, and a line cut short by a killed run is skipped."""
    if not path.is_file():
        return []
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[(record["kind"], record["step"])] = record
    return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


def host_values(tree: Any) -> Any:
    """`tree` with every array as a NumPy array holding its global value."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def hardware() -> str:
    """The devices of the run, in words."""
    device = jax.devices()[0]
    return (
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"{jax.process_count()} process(es)"
    )


class Meter:
    """Throughput and MFU from the wall time between consecutive finished steps."""

    def __init__(self, unit: str, units_per_step: int, flops_per_step: float, peak: float):
        self.unit, self.units_per_step = unit, units_per_step
        self.flops_per_step, self.peak = flops_per_step, peak
        self.last: float | None = None

    def tick(self) -> dict[str, float | None]:
        """``{"<unit>_per_s", "mfu"}`` of the step that just finished (None for the first
        one after a start or a pause: it includes compilation or validation)."""
        now = time.perf_counter()
        seconds = None if self.last is None else now - self.last
        self.last = now
        if seconds is None:
            return {f"{self.unit}_per_s": None, "mfu": None}
        return {
            f"{self.unit}_per_s": self.units_per_step / seconds,
            "mfu": self.flops_per_step / seconds / self.peak,
        }

    def pause(self) -> None:
        """Do not time the next step (something else ran in between)."""
        self.last = None

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        """Progress-bar fields of `record`."""
        rate, mfu = record[f"{self.unit}_per_s"], record["mfu"]
        if rate is None:
            return {}
        return {f"{self.unit}/s": f"{rate:,.0f}", "mfu": f"{mfu:.1%}"}


class Run:
    """One pretraining run in folder ``out`` (see the module docstring).

    Args:
        run: the settings.
        out: the output folder.
        mesh: device mesh, as ``pretraining.mesh.parse_mesh`` reads it.
        resume: continue the newest checkpoint in ``out``.

    Raises:
        RunError: ``out`` holds a checkpoint and `resume` is False, or the checkpoint was
            written with other settings than `run` (``steps`` included).
        ShardingError: the mesh's ``model`` axis does not divide the model's heads
            (for a preset, raised before the corpus is read or the model built; for an
            ``init`` checkpoint, once it is loaded).
    """

    def __init__(self, run: RunConfig, out: str | Path, *, mesh: str = "", resume: bool = False):
        self.config = run
        self.out = Path(out)
        # settings first, then the data, then compilation: a mistake costs no compute
        self.mesh = make_mesh(mesh)
        if run.preset:  # an --init model's heads are known once it is loaded
            check_heads(PRESETS[run.preset].transformer.n_heads, self.mesh)
        check_batch_size(run.batch_size, self.mesh, run.optimizer.accumulate_steps)
        self.task: Task = build_task(run)  # every data error surfaces here, before compute
        if not run.preset:
            check_heads(self.task.model.config.transformer.n_heads, self.mesh)
        self.main_process = jax.process_index() == 0
        if self.main_process:
            print(self.task.corpus.describe(), file=sys.stderr)
        self.steps = CompiledSteps(
            self.task.model,
            self.task.objective,
            run.optimizer,
            run.steps,
            self.mesh,
            seed=run.seed,
            batch_size=run.batch_size,
        )
        self.checkpoints = TrainingCheckpoints(
            self.out / "checkpoints", save_every=run.save_every, keep=run.keep
        )
        latest = self.checkpoints.latest_step()
        if latest is not None and not resume:
            raise RunError(
                f"{self.out} already holds a training checkpoint (step {latest}); pass --resume "
                "to continue it, or choose another --out"
            )
        if latest is None:
            self.params, self.opt_state = self.steps.place(self.task.model)
            self.step = 0
        else:
            self.params, self.opt_state, self.step = self._restore(latest)

    def _abstract_state(self) -> dict[str, Any]:
        params = eqx.filter(self.task.model, eqx.is_array)
        opt_state = jax.eval_shape(self.steps.optimizer.init, params)
        return {
            "params": abstract_state(params, self.steps.param_shardings),
            "opt_state": abstract_state(opt_state, self.steps.opt_shardings),
        }

    def _restore(self, step: int) -> tuple[Any, Any, int]:
        # settings first: another model's arrays would not even match the saved leaves
        saved = RunConfig.from_dict(self.checkpoints.metadata(step)["run"])
        changed = self.config.changes_from(saved)
        if changed:
            raise RunError(
                f"{self.out} was trained with other settings ({'; '.join(changed)}); "
                "resume with the same command (--steps included: it sets the learning-rate "
                "schedule), or choose another --out"
            )
        state, metadata = self.checkpoints.restore(step, self._abstract_state())
        return state["params"], state["opt_state"], metadata["step"]

    def _save(self, *, force: bool = False) -> None:
        metadata = {
            "run": self.config.to_dict(),
            "data_position": {"next_step": self.step, "examples_seen": self._examples()},
        }
        state = {"params": self.params, "opt_state": self.opt_state}
        self.checkpoints.save(self.step, state, metadata, force=force)

    def _examples(self) -> int:
        return self.step * self.config.batch_size

    def _log(self, record: dict[str, Any]) -> None:
        if self.main_process:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self) -> dict[str, float]:
        """Metrics on the ``eval_batches`` held-out batches."""
        totals: dict[str, float] = {}
        for index in range(self.config.eval_batches):
            batch = self.steps.batch(self.task.make_batch, index, VALIDATION)
            sums = host_values(self.steps.eval_step(self.params, batch, index))
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + float(value)
        metrics = summarise(totals)
        self._log({"kind": "validation", "step": self.step, **metrics})
        return metrics

    def train(self, *, progress: bool = True) -> Path | None:
        """Train to ``steps``, validating and saving as configured, then export; returns
        the export folder (None on processes other than the first)."""
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / METRICS_FILE
        if self.main_process and log.is_file() and not log.read_text().endswith("\n"):
            with open(log, "a") as f:  # a killed run may have left half a line
                f.write("\n")
        run, task = self.config, self.task
        peak, peak_source = peak_flops(run.optimizer.compute_dtype)
        meter = Meter(
            task.unit,
            task.units_per_example * run.batch_size,
            task.flops_per_example * run.batch_size,
            peak,
        )
        bar = tqdm(
            total=run.steps,
            initial=self.step,
            disable=not (progress and self.main_process),
            unit="step",
            dynamic_ncols=True,
        )
        pending = None
        while self.step < run.steps:
            batch = self.steps.batch(task.make_batch, self.step)
            self.params, self.opt_state, metrics = self.steps.train_step(
                self.params, self.opt_state, batch, np.int32(self.step)
            )
            self.step += 1
            if pending is not None:  # read the previous step while this one runs
                self._report(*pending, meter, bar)
            pending = (self.step, metrics)
            if run.eval_every and self.step % run.eval_every == 0 and self.step < run.steps:
                self.validate()
                meter.pause()
            self._save()
        if pending is not None:
            self._report(*pending, meter, bar)
        bar.close()
        final = self.validate()
        if self.checkpoints.latest_step() != self.step:
            self._save(force=True)
        self.checkpoints.wait()
        return self.export(final, peak_source)

    def _report(self, step: int, sums: dict[str, Any], meter: Meter, bar: tqdm) -> None:
        values = host_values(sums)
        record = {
            "kind": "train",
            "step": step,
            **summarise(values),
            "grad_norm": float(values["grad_norm"]),
            "lr": float(values["lr"]),
            **meter.tick(),
        }
        self._log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", **meter.postfix(record))

    def export(self, validation: dict[str, float], peak_source: str) -> Path | None:
        """Write the model, its card, the task's gene vocabulary (expression), the loss curve
        and the training summary."""
        params = host_values(self.params)
        if not self.main_process:
            return None
        import zoo

        model = self.steps.model(jax.tree.map(np.asarray, params))
        records = read_metrics(self.out / METRICS_FILE)
        train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
        val = [(r["step"], r["loss"]) for r in records if r["kind"] == "validation"]
        rates = [r[f"{self.task.unit}_per_s"] for r in records if r.get("mfu") is not None]
        mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
        summary: dict[str, Any] = {
            "steps": self.step,
            f"{self.task.unit} seen": self._examples() * self.task.units_per_example,
            FINAL_TRAINING_LOSS: float(
                np.mean([loss for _, loss in train[-20:]]) if train else math.nan
            ),
            **{f"final validation {k}": v for k, v in validation.items()},
            "hardware": hardware(),
            "mesh": describe(self.mesh),
            f"median {self.task.unit}/s": float(np.median(rates)) if rates else math.nan,
            "median MFU": float(np.median(mfus)) if mfus else math.nan,
            "MFU peak": peak_source,
        }
        folder = self.out / EXPORT_DIR
        architecture = architecture_of(model)
        card = card_details(architecture, self.config, self.task.sources, summary)
        zoo.save_pretrained(model, folder, card=card, genes=self.task.genes)
        baseline = math.log(4) if self.config.task == "dna" else None
        ylabel = "cross-entropy (nats/token)" if self.config.task == "dna" else "masked MSE"
        plot_loss_curve(folder / LOSS_CURVE, train, val, baseline, ylabel)
        (folder / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return folder
