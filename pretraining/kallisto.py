"""kallisto 0.48.0, the peer tool of `zoo.DifferentiableEMQuantifier`, fetched from Debian.

The binary (Debian ``kallisto``) links htslib, which comes from Debian ``libhts3`` and
``libhtscodecs2``; all three are catalogued in `pretraining.sources.DATASETS` and verified by
checksum. The libraries are exposed to the binary under their sonames through
``LD_LIBRARY_PATH``; nothing is installed system-wide.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from pretraining.sources import cache_root, dataset

_LIBRARIES = {"libhts": "libhts.so.3", "libhtscodecs": "libhtscodecs.so.2"}


class KallistoError(RuntimeError):
    """kallisto exited with an error; the message holds its stderr."""


class KallistoRun(NamedTuple):
    """Outputs of `pseudoalign_and_quantify`."""

    quant_dir: Path
    pseudo_dir: Path
    quant_seconds: float


def kallisto_command() -> tuple[Path, dict[str, str]]:
    """The kallisto executable and the environment to run it with (fetching it if needed)."""
    binary = dataset("kallisto-binary", quiet=True)
    binary.chmod(0o755)
    libraries = cache_root() / "kallisto-0.48.0-libraries"
    libraries.mkdir(parents=True, exist_ok=True)
    for name, soname in _LIBRARIES.items():
        link = libraries / soname
        target = dataset(name, quiet=True)
        if not link.is_symlink() or link.resolve() != target.resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libraries), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return binary, env


def run_kallisto(*args: str | os.PathLike) -> str:
    """Run ``kallisto ARGS`` and return its stderr (where it reports progress).

    Raises:
        KallistoError: if kallisto fails.
    """
    binary, env = kallisto_command()
    result = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise KallistoError(f"kallisto {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
    return result.stderr


def pseudoalign_and_quantify(
    transcripts: os.PathLike, reads_1: os.PathLike, reads_2: os.PathLike, out: os.PathLike
) -> KallistoRun:
    """Index `transcripts`, then run ``kallisto quant`` (into ``out/quant``) and
    ``kallisto pseudo`` (into ``out/pseudo``) on the read pairs; time the quant call."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "transcripts.idx"
    run_kallisto("index", "-i", index, transcripts)
    start = time.perf_counter()
    run_kallisto("quant", "-i", index, "-o", out / "quant", reads_1, reads_2)
    seconds = time.perf_counter() - start
    run_kallisto("pseudo", "-i", index, "-o", out / "pseudo", reads_1, reads_2)
    return KallistoRun(out / "quant", out / "pseudo", seconds)
