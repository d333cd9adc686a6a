"""Reference code from PyPI wheels whose dependency pins clash with the project's.

Some parity references (Geneformer's tokenizer in ``helical``, scGPT's model in ``scgpt``)
ship in wheels that pin old torch or numpy versions, so they cannot be installed next to
the project. `import_from_wheel` instead downloads the wheel once with
``pip download --no-deps`` into the project cache (`pretraining.sources.cache_root`),
checks its SHA-256, unpacks it, and imports one module from it: its parent packages are
registered as empty namespace packages, so their ``__init__`` files (which import the whole
library and its pinned dependencies) never run. Modules the reference imports but never
uses on the tested path can be given as stubs.
"""

from __future__ import annotations

import fcntl
import importlib
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

from pretraining.sources import cache_root, sha256_of

# SHA-256 of each reference wheel, as pip downloaded it from PyPI.
WHEELS = {
    "helical==2.2.0": "80f5458581331b2931f4b4883b5b944a8e330ac9684a23167bc24b8d4a8985cf",
    "scgpt==0.2.4": "aafa4ac8dcb5a3d7b81ab71f136baf324b7dc6d83109781340ba601fd236759f",
}


def wheel_root(requirement: str) -> Path:
    """The unpacked wheel of `requirement` (``name==version``, a key of `WHEELS`), fetched
    and unpacked once.

    Raises:
        RuntimeError: when pip fails or the wheel's SHA-256 is not the one in `WHEELS`.
    """
    sha256 = WHEELS[requirement]
    name, version = requirement.split("==")
    folder = cache_root() / "reference_wheels" / f"{name}-{version}"
    unpacked = folder / "unpacked"
    folder.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may ask together: one fetches, the others wait on the lock.
    with open(folder / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not unpacked.is_dir():
            _fetch_and_unpack(requirement, sha256, folder, unpacked)
    return unpacked


def _fetch_and_unpack(requirement: str, sha256: str, folder: Path, unpacked: Path) -> None:
    name, version = requirement.split("==")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    result = subprocess.run(
        [*command, "-q", "-d", str(folder), requirement], capture_output=True, text=True
    )
    wheels = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {requirement} failed: {result.stderr[-2000:]}")
    if sha256_of(wheels[0]) != sha256:
        raise RuntimeError(f"{wheels[0]} does not have the SHA-256 {sha256}")
    staging = folder / "staging"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted earlier fetch
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(staging)
    staging.rename(unpacked)


def import_from_wheel(
    requirement: str,
    module: str,
    stubs: dict[str, types.ModuleType] | None = None,
) -> types.ModuleType:
    """Import `module` (dotted, e.g. ``"scgpt.model.model"``) from the wheel of
    `requirement`, without running its parent packages' ``__init__`` files.

    Args:
        requirement: ``name==version`` on PyPI, a key of `WHEELS`.
        module: the module to import.
        stubs: modules to register under their names first (for imports the tested path
            does not use); an existing module of that name is left in place.

    Returns:
        The imported module.
    """
    root = wheel_root(requirement)
    for name, stub in (stubs or {}).items():
        sys.modules.setdefault(name, stub)
    parts = module.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package not in sys.modules:
            namespace = types.ModuleType(package)
            namespace.__path__ = [str(root.joinpath(*parts[:depth]))]
            sys.modules[package] = namespace
    return importlib.import_module(module)
