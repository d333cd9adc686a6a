"""The main job (``biozoo demo``): the three things users come for, end to end, offline.

1. Download pretrained weights: load the published DNA encoder by its catalog name.
2. Fine-tune: the Oct4-versus-MafK TF-binding task for a short budget, from the pretrained
   encoder and from scratch (same architecture, same budget), test accuracy and MCC side
   by side with the simple baseline a checkpoint must beat, 6-mer counts and logistic
   regression (`finetuning.kmer_baseline`).
3. Pretrain on a device mesh: a short masked-language-model run on real DNA over 8
   simulated CPU devices with FSDP (``data=4,fsdp=2``), killed with SIGKILL once its
   first checkpoint is written, then finished by the same command plus ``--resume``.
4. Save the resumed run's model and load it back with `zoo.from_pretrained`.
5. The user's own file: the test peaks written as a labelled TSV, as a user would bring
   them, and the fine-tuned model evaluated on it (``biozoo evaluate``'s function), which
   must reproduce the fine-tune's own test figures.

It ends with a summary table.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from finetuning.tasks import Task

DNA_CHECKPOINT = "dna-encoder-tiny"


@dataclasses.dataclass
class Row:
    """One line of the summary table."""

    step: str
    result: str
    seconds: float


def fine_tune_both(out: Path, steps: int) -> tuple[list[Row], Path]:
    """Steps 1 and 2: the pretrained encoder and a from-scratch twin, fine-tuned alike; the
    rows and the folder of the fine-tuned pretrained encoder."""
    import checkpoints
    from finetuning.backbones import same_architecture_from_scratch
    from finetuning.run import run_fine_tune
    from finetuning.tasks import tf_binding
    from finetuning.train import FineTuneConfig

    start = time.perf_counter()
    backbone, provenance = checkpoints.from_pretrained(DNA_CHECKPOINT, with_provenance=True)
    rows = [
        Row(
            "load pretrained",
            f"{DNA_CHECKPOINT} ({provenance.source})",
            time.perf_counter() - start,
        )
    ]
    task = tf_binding()
    config = FineTuneConfig(
        strategy="full", max_steps=steps, eval_every=max(steps // 4, 1), batch_size=32
    )
    folders = {}
    for name, model in (
        ("pretrained", backbone),
        ("from scratch", same_architecture_from_scratch(backbone)),
    ):
        start = time.perf_counter()
        result, folder = run_fine_tune(
            task,
            model,
            config,
            out / f"tf-binding-{name.replace(' ', '-')}",
            base_model=DNA_CHECKPOINT if name == "pretrained" else None,
        )
        figures = f"test accuracy {result.test['accuracy']:.3f}, MCC {result.test['mcc']:.3f}"
        rows.append(Row(f"fine-tune TF binding ({name})", figures, time.perf_counter() - start))
        folders[name] = folder
    rows.append(kmer_baseline_row(task))
    return rows, folders["pretrained"]


def kmer_baseline_row(task: Task) -> Row:
    """The simple baseline beside the fine-tunes: 6-mer counts and logistic regression,
    fitted on the same training peaks and scored on the same test peaks."""
    from finetuning.kmer_baseline import kmer_logistic_regression

    start = time.perf_counter()
    report, _ = kmer_logistic_regression(
        (task.train.inputs, task.train.labels), (task.test.inputs, task.test.labels), k=6
    )
    figures = f"test accuracy {report['accuracy']:.3f}, MCC {report['mcc']:.3f}"
    return Row(
        "TF binding baseline (6-mer logistic regression)", figures, time.perf_counter() - start
    )


def evaluate_on_a_file(model: Path, out: Path) -> list[Row]:
    """Step 5: the fine-tuned model evaluated on the test peaks written as a user's TSV."""
    import pandas as pd

    from finetuning.api import evaluate
    from finetuning.tasks import tf_binding

    start = time.perf_counter()
    test = tf_binding().test
    classes = ("Oct4", "MafK")
    path = out / "my_peaks.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"sequence": test.inputs, "label": [classes[i] for i in test.labels]})
    table.to_csv(path, sep="\t", index=False)
    report = evaluate(model, path, out=out / "evaluation" / "metrics.tsv", progress=False)
    figures = f"{path.name}: accuracy {report['accuracy']:.3f}, MCC {report['mcc']:.3f}"
    return [Row("evaluate on a user's TSV", figures, time.perf_counter() - start)]


def pretrain_with_resume(out: Path, steps: int) -> list[Row]:
    """Steps 3 and 4: a sharded pretraining run of `steps` steps killed (SIGKILL) as soon as
    its first checkpoint (at ``steps // 2``) is on disk, finished by the same command plus
    ``--resume``, then reloaded."""
    from checkpoints import from_pretrained

    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    command = [
        sys.executable, "-m", "pretraining", "dna", "human-chrX-70Mb",
        "--preset", "tiny", "--mesh", "data=4,fsdp=2", "--batch-size", "32",
        "--steps", str(steps), "--save-every", str(steps // 2),
        "--eval-every", str(steps // 2), "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    killed = _kill_after_checkpoint(command, env, out / "checkpoints" / str(steps // 2))
    outcome = (
        f"killed (SIGKILL) after the step-{steps // 2} checkpoint, at step {_last_step(out)}"
        if killed
        else f"finished (step {_last_step(out)}) before it could be killed"
    )
    rows = [Row("pretrain 8 devices, FSDP", outcome, time.perf_counter() - start)]
    start = time.perf_counter()
    subprocess.run([*command, "--resume"], env=env, check=True)
    rows.append(
        Row(
            "resume with the same command",
            f"step {_last_step(out)}, validation loss {_last_validation(out):.3f}",
            time.perf_counter() - start,
        )
    )
    start = time.perf_counter()
    model = eqx.nn.inference_mode(from_pretrained(out / "model"))
    ids, mask = model.tokenizer(["ACGTACGTTAGCCGATNNACGT"])
    pooled = model(jnp.asarray(ids[0]), jnp.asarray(mask[0])).pooled
    rows.append(
        Row(
            "save and reload",
            f"embedding {tuple(pooled.shape)}, finite: {bool(np.isfinite(pooled).all())}",
            time.perf_counter() - start,
        )
    )
    return rows


def _kill_after_checkpoint(command: list[str], env: dict[str, str], checkpoint: Path) -> bool:
    """Run `command` and SIGKILL it once the `checkpoint` folder exists (Orbax renames it into
    place when complete); False when the run ended first."""
    process = subprocess.Popen(command, env=env)
    while not checkpoint.is_dir() and process.poll() is None:
        time.sleep(0.02)
    if process.poll() is not None:
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _metrics(out: Path) -> list[dict]:
    from pretraining.train import read_metrics

    return read_metrics(out / "metrics.jsonl")


def _last_step(out: Path) -> int:
    return max(record["step"] for record in _metrics(out))


def _last_validation(out: Path) -> float:
    return [r for r in _metrics(out) if r["kind"] == "validation"][-1]["loss"]


def run_main_job(out: Path, *, fine_tune_steps: int = 200, pretrain_steps: int = 40) -> list[Row]:
    """Run every step (into a fresh `out`); return the summary rows."""
    shutil.rmtree(out, ignore_errors=True)
    rows, fine_tuned = fine_tune_both(out / "finetune", fine_tune_steps)
    return [
        *rows,
        *pretrain_with_resume(out / "pretrain", pretrain_steps),
        *evaluate_on_a_file(fine_tuned, out / "own-file"),
    ]
