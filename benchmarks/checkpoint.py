"""Save and load times of a ~200 MB checkpoint against a plain read of the same bytes.

A `TransformerSequenceEncoder` of about 200 MB of float32 weights is saved as one
``model.safetensors`` and as 50 MB shards. Each layout is loaded with `zoo.from_pretrained`
(best of three, after one warm-up so the file is in the page cache, as it is for the plain
read) and compared with the peer: reading the same files' bytes into memory with NumPy,
the least any loader must do. ``safetensors.numpy.load_file`` on the single file is shown
too, and saves are set beside a plain write of as many bytes.

Peak host memory is measured in a fresh process with four CPU devices, loading the sharded
checkpoint onto a 2 x 2 mesh (matrices split over both axes). On CPU the loaded arrays are
themselves host memory, so the figure reported against the target is the *staging
overhead*: anonymous resident memory (``RssAnon``, sampled every millisecond) beyond the
baseline and beyond the arrays already placed, which bounds what the loader holds besides
its result. The target is below 1.5 x the largest single array.

``python -m benchmarks.checkpoint``; the last line printed is a JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import safetensors.numpy
from tqdm.auto import tqdm

import zoo
from checkpoints import shards

CONFIG = zoo.TransformerSequenceEncoderConfig(
    transformer=zoo.TransformerConfig(dim=1024, n_layers=4, n_heads=16, mlp_dim=4096),
    kmer=6,
)
SHARD_SIZE = "50MB"
REPEATS = 3


def best_of(function, repeats: int = REPEATS) -> float:
    """Fastest wall time of `repeats` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def load(folder: Path) -> None:
    model = zoo.from_pretrained(folder)
    jax.block_until_ready(eqx.filter(model, eqx.is_array))


def plain_read(folder: Path) -> None:
    for name in shards.files_of(folder):
        np.fromfile(folder / name, dtype=np.uint8)


def plain_write(folder: Path, n_bytes: int) -> None:
    """Write `n_bytes` of fresh data to one file, the least a save must do."""
    folder.mkdir(exist_ok=True)
    np.ones(n_bytes, np.uint8).tofile(folder / "bytes.bin")


def rss_anon() -> int:
    """Anonymous resident bytes of this process (not counting mapped file pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def memory_probe(folder: Path) -> dict:
    """Load `folder` onto a 2 x 2 mesh, sampling memory; runs in a 4-device process."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from checkpoints import placement
    from checkpoints.pretrained import abstract_model

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "model"))

    def rule(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return None
        if leaf.ndim >= 2 and leaf.shape[-1] % 2 == 0 and leaf.shape[-2] % 2 == 0:
            return NamedSharding(mesh, P(*[None] * (leaf.ndim - 2), "fsdp", "model"))
        return NamedSharding(mesh, P())

    skeleton = abstract_model(folder)
    shardings = jax.tree.map(rule, skeleton)
    shapes = [x for x in jax.tree.leaves(skeleton) if isinstance(x, jax.ShapeDtypeStruct)]
    sizes = [x.size * x.dtype.itemsize for x in shapes]
    placed: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    make = jax.make_array_from_callback

    def counted(shape, sharding, callback):
        array = make(shape, sharding, callback)
        array.block_until_ready()
        placed.append((time.perf_counter(), placed[-1][1] + array.nbytes))
        return array

    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter(), rss_anon()))
            time.sleep(0.001)

    placement.jax.make_array_from_callback = counted
    baseline = rss_anon()
    sampler = threading.Thread(target=sample)
    sampler.start()
    model = zoo.from_pretrained(folder, shardings=shardings)
    jax.block_until_ready(eqx.filter(model, eqx.is_array))
    done.set()
    sampler.join()
    times = np.array([t for t, _ in placed])
    overhead = max(
        rss - baseline - placed[np.searchsorted(times, t, side="right") - 1][1]
        for t, rss in samples
    )
    return {
        "model_bytes": sum(sizes),
        "largest_array_bytes": max(sizes),
        "peak_rss_anon_over_baseline_bytes": max(r for _, r in samples) - baseline,
        "staging_overhead_bytes": int(overhead),
        "samples": len(samples),
    }


def measure_memory(folder: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.checkpoint", "--memory-probe", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    steps = tqdm(total=7, desc="checkpoint benchmark", file=sys.stderr)
    model = zoo.TransformerSequenceEncoder(CONFIG, key=jax.random.key(0))
    jax.block_until_ready(model)
    steps.update()
    with tempfile.TemporaryDirectory(prefix="biozoo-bench-") as scratch:
        single, sharded = Path(scratch) / "single", Path(scratch) / "sharded"
        save_single_s = best_of(lambda: zoo.save_pretrained(model, single), repeats=1)
        save_sharded_s = best_of(
            lambda: zoo.save_pretrained(model, sharded, max_shard_size=SHARD_SIZE), repeats=1
        )
        steps.update()
        n_bytes = sum((single / n).stat().st_size for n in shards.files_of(single))
        write_s = best_of(lambda: plain_write(Path(scratch) / "plain", n_bytes), repeats=1)
        read_single_s = best_of(lambda: plain_read(single))
        read_sharded_s = best_of(lambda: plain_read(sharded))
        steps.update()
        load_single_s = best_of(lambda: load(single))
        steps.update()
        load_sharded_s = best_of(lambda: load(sharded))
        steps.update()
        safetensors_s = best_of(lambda: safetensors.numpy.load_file(single / "model.safetensors"))
        steps.update()
        memory = measure_memory(sharded)
        n_shards = len(shards.files_of(sharded))
        steps.update()
    steps.close()
    mb = n_bytes / 1e6
    print(f"checkpoint of {mb:.0f} MB, {n_shards} shards of <= {SHARD_SIZE}")
    print(
        f"save: single file {save_single_s:.3f} s, sharded {save_sharded_s:.3f} s;"
        f" plain write of the same bytes {write_s:.3f} s"
    )
    print(f"plain read: single {read_single_s:.3f} s, shards {read_sharded_s:.3f} s")
    print(f"zoo.from_pretrained: single {load_single_s:.3f} s, sharded {load_sharded_s:.3f} s")
    print(f"safetensors.numpy.load_file: {safetensors_s:.3f} s")
    ratio = memory["staging_overhead_bytes"] / memory["largest_array_bytes"]
    print(
        f"loading onto a 2x2 mesh: staging overhead {memory['staging_overhead_bytes'] / 1e6:.1f}"
        f" MB = {ratio:.2f} x the largest array ({memory['largest_array_bytes'] / 1e6:.1f} MB);"
        f" peak RssAnon over baseline {memory['peak_rss_anon_over_baseline_bytes'] / 1e6:.1f} MB"
        f" for {memory['model_bytes'] / 1e6:.1f} MB of weights"
    )
    summary = {
        "name": "checkpoint",
        "ours": "zoo.from_pretrained, single file",
        "ours_s": round(load_single_s, 4),
        "peer": "plain read of the same bytes (numpy.fromfile)",
        "peer_s": round(read_single_s, 4),
        "speedup": round(read_single_s / load_single_s, 3),
        "sharded_ours_s": round(load_sharded_s, 4),
        "sharded_peer_s": round(read_sharded_s, 4),
        "sharded_speedup": round(read_sharded_s / load_sharded_s, 3),
        "safetensors_numpy_s": round(safetensors_s, 4),
        "save_single_s": round(save_single_s, 4),
        "save_sharded_s": round(save_sharded_s, 4),
        "plain_write_s": round(write_s, 4),
        "megabytes": round(mb, 1),
        "staging_overhead_over_largest_array": round(ratio, 3),
        **memory,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-probe"]:
        print(json.dumps(memory_probe(Path(sys.argv[2]))))
    else:
        main()
