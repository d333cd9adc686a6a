"""Why the DNA transformer cannot learn a planted motif: one recipe change at a time.

Issue 13's task (`benchmarks.downstream_dna_tasks.planted_kmer`: random 200 bp sequences,
half carrying ``TGACTCA`` in positions 80-112) is learned from scratch by the architecture
of the published ``dna-encoder-tiny`` (single-nucleotide tokens, learned positions, mean
pooling, width 64, 2 layers, dropout 0.1; AdamW at 1e-3 with 10 % warm-up) and by variants
that each change one thing: the learning rate and warm-up, the tokens (overlapping or
non-overlapping k-mers, `zoo.sequence.nucleotides.NucleotideTokenizer`), the pooling, the
position encoding, width and depth, dropout, and the head's initialisation. A
`zoo.SequenceEmbedding` CNN is the reference. Every variant has the same step budget and
data; the table gives test MCC and AUROC with 95 % bootstrap intervals
(`benchmarks.bootstrap`), and the last training loss (mean over the last evaluation
window) to tell a model that cannot fit the training set from one that overfits.

Before them, k-mer probes measure what a bag of k-mers can see: logistic regression on
the frequencies of the overlapping k-mers, k = 1 to 7
(`benchmarks.downstream_baselines.kmer_logistic`).

``python -m benchmarks.motif_ablation [--steps N] [--only NAME ...]``; prints the Markdown
tables, writes them to ``--out``, and ends with a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from benchmarks.bootstrap import bootstrap_metrics
from benchmarks.downstream_baselines import fresh_cnn, kmer_logistic
from benchmarks.downstream_dna_tasks import planted_kmer
from finetuning.run import task_model
from finetuning.train import FineTuneConfig, fine_tune
from zoo.common.transformer import TransformerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig

PUBLISHED = TransformerSequenceEncoderConfig(
    transformer=TransformerConfig(dim=64, n_layers=2, n_heads=4, mlp_dim=256, dropout=0.1),
    max_len=256,
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation row: a backbone config (None: the CNN), optimiser changes, and whether
    the head starts at zero."""

    name: str
    encoder: TransformerSequenceEncoderConfig | None = PUBLISHED
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    zero_head: bool = False


def _encoder(**changes) -> TransformerSequenceEncoderConfig:
    transformer = {k: changes.pop(k) for k in list(changes) if k in ("dim", "n_layers", "dropout")}
    if "dim" in transformer:
        transformer["mlp_dim"] = 4 * transformer["dim"]
    return dataclasses.replace(
        PUBLISHED,
        transformer=dataclasses.replace(PUBLISHED.transformer, **transformer),
        **changes,
    )


VARIANTS = (  # most telling first, so a run cut short still answers the question
    Variant("published recipe (1-nt tokens, learned positions, mean pool, 64x2, lr 1e-3)"),
    Variant("6-mer tokens, stride 1 (DNABERT)", encoder=_encoder(kmer=6)),
    Variant("CNN (zoo.SequenceEmbedding)", encoder=None),
    Variant("6-mer tokens, stride 6 (NT)", encoder=_encoder(kmer=6, kmer_stride=6)),
    Variant("CLS pooling", encoder=_encoder(pooling="cls")),
    Variant("sinusoidal positions", encoder=_encoder(positions="sinusoidal")),
    Variant("lr 1e-4", learning_rate=1e-4),
    Variant("lr 3e-3", learning_rate=3e-3),
    Variant("dropout 0", encoder=_encoder(dropout=0.0)),
    Variant("zero-initialised head", zero_head=True),
    Variant("3-mer tokens, stride 1", encoder=_encoder(kmer=3)),
    Variant("no warm-up", warmup_fraction=0.0),
    Variant("1 layer", encoder=_encoder(n_layers=1)),
    Variant("width 128, 4 layers", encoder=_encoder(dim=128, n_layers=4)),
)


def backbone_of(variant: Variant, seed: int) -> eqx.Module:
    """A freshly initialised backbone for `variant`."""
    if variant.encoder is None:
        return fresh_cnn(seed)
    return TransformerSequenceEncoder(variant.encoder, key=jax.random.key(seed))


def run_variant(variant: Variant, task, steps: int, batch_size: int, seed: int) -> dict:
    """Train `variant` from scratch on `task` and measure it on the test split."""
    model = task_model(task, backbone_of(variant, seed), seed=seed)
    if variant.zero_head:
        model = eqx.tree_at(lambda m: m.head.weight, model, jnp.zeros_like(model.head.weight))
    config = FineTuneConfig(
        strategy="full",
        learning_rate=variant.learning_rate,
        batch_size=batch_size,
        max_steps=steps,
        warmup_steps=int(variant.warmup_fraction * steps),
        eval_every=max(1, steps // 10),
        patience=steps,  # no early stop: every variant gets the whole budget
        seed=seed,
    )
    start = time.perf_counter()
    result = fine_tune(model, task, config, progress=True)
    estimates = bootstrap_metrics(task.test.labels, result.test_outputs)
    return {
        "variant": variant.name,
        "seconds": round(time.perf_counter() - start, 1),
        "final_train_loss": round(result.history[-1]["train_loss"], 4),
        **{k: [round(e.value, 4), round(e.low, 4), round(e.high, 4)] for k, e in estimates.items()},
    }


def kmer_probes(task, ks: range = range(1, 8)) -> list[dict]:
    """Test metrics (with intervals) of k-mer-frequency logistic regression for each k."""
    rows = []
    for k in ks:
        estimates = bootstrap_metrics(task.test.labels, kmer_logistic(task, k))
        rows.append(
            {
                "k": k,
                **{
                    m: [round(e.value, 4), round(e.low, 4), round(e.high, 4)]
                    for m, e in estimates.items()
                },
            }
        )
    return rows


def probe_markdown(rows: list[dict]) -> str:
    """The k-mer probe table."""
    lines = ["| k-mer LR | MCC [95% CI] | AUROC [95% CI] |", "| --- | --- | --- |"]
    for r in rows:
        mcc, auc = r["mcc"], r["auroc"]
        lines.append(
            f"| k = {r['k']} | {mcc[0]:.3f} [{mcc[1]:.3f}, {mcc[2]:.3f}] | "
            f"{auc[0]:.3f} [{auc[1]:.3f}, {auc[2]:.3f}] |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], header: str) -> str:
    """The ablation table."""
    lines = [
        header,
        "",
        "| variant | MCC [95% CI] | AUROC [95% CI] | final train loss | s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mcc, auc = r["mcc"], r["auroc"]
        lines.append(
            f"| {r['variant']} | {mcc[0]:.3f} [{mcc[1]:.3f}, {mcc[2]:.3f}] | "
            f"{auc[0]:.3f} [{auc[1]:.3f}, {auc[2]:.3f}] | {r['final_train_loss']:.3f} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=2000, help="training sequences")
    parser.add_argument("--test", type=int, default=600, help="test sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only the variants whose name starts so (no names: only the k-mer probes)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "validation": args.test // 2, "test": args.test}
    task = planted_kmer(sizes, seed=args.seed)
    chosen: list[Variant] = [
        v for v in VARIANTS if args.only is None or any(v.name.startswith(p) for p in args.only)
    ]
    header = (
        f"Planted TGACTCA, from scratch: {args.train} training / {args.test} test sequences, "
        f"{args.steps} steps of batch {args.batch_size}, seed {args.seed}, "
        f"{jax.devices()[0].device_kind}."
    )
    probes = kmer_probes(task)
    print(probe_markdown(probes))
    rows = []
    for i, variant in enumerate(chosen):
        print(f"[{i + 1}/{len(chosen)}] {variant.name}", file=sys.stderr, flush=True)
        rows.append(run_variant(variant, task, args.steps, args.batch_size, args.seed))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.out is not None:  # after every variant, so a run cut short keeps its rows
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(probe_markdown(probes) + "\n" + markdown(rows, header))
    print(markdown(rows, header))
    summary = {"name": "motif_ablation", "steps": args.steps, "kmer_probes": probes, "rows": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
