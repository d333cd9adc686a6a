"""Out-of-core pretraining corpora: memory, loader speed and start-up time on generated data.

Generates, in a temporary folder that is deleted afterwards (never in the checkout):

* a sparse single-cell corpus of ``--cells`` cells in ``--files`` .h5ad files over
  ``--genes`` genes (Ensembl-like IDs), each file holding a different random 75 % of them,
  about ``--nnz`` stored counts per cell;
* a random DNA FASTA of ``--bases`` bases in records of ``--record`` bases.

It then measures, each pretraining run in its own process (``python -m pretraining``,
``--preset small``, ``--steps`` steps):

* expression: peak RSS and time to the first logged step of runs on the first 2 files and
  on all files (the gene-median pass cold, then cached); the loader's cells/s
  (`CellBatches.batch`, one process) against the cells/s the small model consumes;
* DNA: the same for the FASTA read in memory and for the packed corpus of
  ``biozoo prepare dna`` (whose one-off preparation is timed), and the tokens/s of
  `MaskedWindows.batch` on each.

Prints a table, then one JSON line. Run it niced: ``nice python benchmarks/corpus.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pretraining.dna_data import DnaCorpus, MaskedWindows, prepare_packed
from pretraining.expression_data import CellBatches, ExpressionCorpus
from pretraining.train import METRICS_FILE
from zoo.sequence.nucleotides import NucleotideTokenizer

BATCH = 32
DNA_SEQ_LEN = 512  # the small preset's


def write_cell_files(folder: Path, args: argparse.Namespace) -> list[Path]:
    """The generated .h5ad files (module docstring)."""
    rng = np.random.default_rng(0)
    ids = [f"ENSG{i:011d}" for i in range(args.genes)]
    per_file = args.cells // args.files
    folder.mkdir(parents=True)
    paths = []
    for index in range(args.files):
        genes = np.sort(rng.choice(args.genes, int(0.75 * args.genes), replace=False))
        n_draws = rng.poisson(args.nnz, per_file)
        rows = np.repeat(np.arange(per_file, dtype=np.int64), n_draws)
        keys = np.unique(rows * len(genes) + rng.integers(0, len(genes), len(rows)))
        rows, columns = np.divmod(keys, len(genes))
        counts = sp.csr_matrix(
            (rng.geometric(0.4, len(keys)).astype(np.float32), (rows, columns)),
            shape=(per_file, len(genes)),
        )
        var = pd.DataFrame(index=[ids[g] for g in genes])
        paths.append(folder / f"cells{index:02d}.h5ad")
        anndata.AnnData(counts, var=var).write_h5ad(paths[-1])
        print(f"  wrote {paths[-1].name}: {per_file:,} cells, {counts.nnz:,} counts", flush=True)
    return paths


def write_fasta(path: Path, args: argparse.Namespace) -> None:
    """Random bases, ``--record`` per record, 80 per line."""
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b"ACGT", np.uint8)
    with open(path, "wb") as f:
        for start in range(0, args.bases, args.record):
            bases = letters[rng.integers(0, 4, min(args.record, args.bases - start))].tobytes()
            f.write(f">record{start // args.record}\n".encode())
            f.write(b"\n".join(bases[i : i + 80] for i in range(0, len(bases), 80)) + b"\n")


def pretraining_run(data: list[str], task: str, out: Path, args: argparse.Namespace) -> dict:
    """One ``python -m pretraining`` run in its own process: peak RSS (MB, from the
    kernel's accounting of that process), seconds to the first logged step, and the units/s
    it consumed between its first and last logged steps."""
    argv = [
        sys.executable, "-m", "pretraining", task, *data, "--preset", "small",
        "--steps", str(args.steps), "--batch-size", str(BATCH), "--eval-every", "0",
        "--eval-batches", "1", "--save-every", "0", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    out.mkdir(parents=True)
    start = time.perf_counter()
    with open(out / "stderr.txt", "wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    metrics, logged = out / METRICS_FILE, []  # (seconds, train steps logged) as they grow
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        steps = metrics.read_text().count('"kind": "train"') if metrics.is_file() else 0
        if steps and (not logged or steps > logged[-1][1]):
            logged.append((time.perf_counter() - start, steps))
        time.sleep(0.05)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"pretraining run failed:\n{(out / 'stderr.txt').read_text()[-3000:]}")
    units = 1 if task == "expression" else DNA_SEQ_LEN
    (t0, s0), (t1, s1) = logged[0], logged[-1]
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KB
        "first_step_s": round(t0, 1),
        "consumed_per_s": round((s1 - s0) * BATCH * units / (t1 - t0), 1),
    }


def loader_rate(make_batch, n_batches: int, units_per_example: int) -> float:
    """Units per second of `make_batch(step, rows)` over `n_batches` batches of BATCH."""
    make_batch(10_000, range(BATCH))  # open files, warm caches
    start = time.perf_counter()
    for step in range(n_batches):
        make_batch(step, range(BATCH))
    return n_batches * BATCH * units_per_example / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--nnz", type=int, default=60, help="stored counts per cell")
    parser.add_argument("--bases", type=int, default=1_000_000_000)
    parser.add_argument("--record", type=int, default=50_000_000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--folder", default=None, help="scratch folder (default: a temp one)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(dir=args.folder)
    root = Path(scratch.name)
    os.environ["BIOZOO_CACHE"] = str(root / "cache")  # the runs' median cache, deleted after
    result: dict = {"cells": args.cells, "files": args.files, "bases": args.bases}
    rows = []

    print("generating the cell corpus", flush=True)
    started = time.perf_counter()
    paths = [str(p) for p in write_cell_files(root / "cells", args)]
    result["cell_corpus_mb"] = round(sum(os.path.getsize(p) for p in paths) / 1e6)
    print(f"  {result['cell_corpus_mb']} MB in {time.perf_counter() - started:.0f} s")
    for label, data in (
        ("expression, 2 files, cold", paths[:2]),
        (f"expression, {args.files} files, cold", paths),
        (f"expression, {args.files} files, cached medians", paths),
    ):
        print(f"run: {label}", flush=True)
        rows.append((label, pretraining_run(data, "expression", root / f"run{len(rows)}", args)))
        print(f"  {rows[-1][1]}", flush=True)
    corpus = ExpressionCorpus(paths, val_fraction=0.05)
    cells_per_s = loader_rate(CellBatches(corpus, seed=0).batch, 50, 1)
    consumed = rows[-1][1]["consumed_per_s"]
    result["expression"] = {label: row for label, row in rows}
    result["expression_loader_cells_per_s"] = round(cells_per_s, 1)
    result["expression_loader_over_consumption"] = round(cells_per_s / consumed, 1)
    print(f"  loader: {cells_per_s:,.0f} cells/s", flush=True)
    small, large = rows[0][1]["peak_rss_mb"], rows[1][1]["peak_rss_mb"]
    result["rss_growth_2_to_all_files"] = round(large / small - 1, 3)

    print("generating the DNA corpus", flush=True)
    fasta = root / "random.fa"
    write_fasta(fasta, args)
    started = time.perf_counter()
    packed = prepare_packed([str(fasta)], str(root / "packed"))
    result["dna_prepare_s"] = round(time.perf_counter() - started, 1)
    print(f"  packed in {result['dna_prepare_s']} s", flush=True)
    dna_rows = []
    for label, data in (("DNA, FASTA in memory", fasta), ("DNA, packed and mapped", packed)):
        print(f"run: {label}", flush=True)
        dna_rows.append(
            (label, pretraining_run([str(data)], "dna", root / f"run{len(rows)}", args))
        )
        rows.append(dna_rows[-1])
        print(f"  {rows[-1][1]}", flush=True)
    tokenizer = NucleotideTokenizer()
    for label, data in (("memory", fasta), ("packed", packed)):
        windows = MaskedWindows(DnaCorpus([str(data)]), tokenizer, DNA_SEQ_LEN, seed=0)
        rate = loader_rate(windows.batch, 20, DNA_SEQ_LEN)
        result[f"dna_loader_tokens_per_s_{label}"] = round(rate, 1)
    result["dna"] = {label: row for label, row in dna_rows}
    result["dna_loader_over_consumption"] = round(
        result["dna_loader_tokens_per_s_packed"] / dna_rows[-1][1]["consumed_per_s"], 1
    )

    header = f"{'peak RSS MB':>12} {'first step s':>13} {'used/s':>10}"
    print(f"\n{'run (used/s: cells or tokens)':44} {header}")
    for label, row in rows:
        print(
            f"{label:44} {row['peak_rss_mb']:>12,.0f} {row['first_step_s']:>13.1f} "
            f"{row['consumed_per_s']:>10,.0f}"
        )
    print(f"expression loader: {cells_per_s:,.0f} cells/s on one process")
    for label in ("memory", "packed"):
        rate = result[f"dna_loader_tokens_per_s_{label}"]
        print(f"DNA loader ({label}): {rate:,.0f} tokens/s on one process")
    print(f"DNA packing, once: {result['dna_prepare_s']} s")
    scratch.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
