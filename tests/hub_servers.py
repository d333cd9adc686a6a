"""Real Hub servers on loopback for the pull and push tests, and a client pointed at them.

`olah` is the olah mirror (PyPI, MIT), installed once into its own virtual environment
under the project cache (its dependencies pin versions that clash with ours) and started
offline, serving model repositories laid out as git folders whose safetensors are committed
as git-LFS pointers with the objects under ``.git/lfs/objects``. `fake_hub` is
``tests/hub_server.py``, which also implements the upload API that olah lacks.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
``HF_HUB_DISABLE_XET`` once, at import; `point_client_at` sets the constants they become,
which is what those variables do for a fresh process (the CLI test sets the variables
themselves in a subprocess).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pretraining.sources import cache_root

OLAH_VERSION = "0.5.4"
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers, even if with an error
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing serves {url} after {seconds} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def olah_executable() -> Path:
    """``olah-cli`` in its own cached virtual environment, created on first use."""
    venv = cache_root() / f"olah-venv-{OLAH_VERSION}"
    executable = venv / "bin" / "olah-cli"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may get here together: one creates the environment, the others
    # wait for it on the lock instead of installing into the same folder at once.
    with open(venv.parent / f"olah-venv-{OLAH_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not executable.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", f"olah=={OLAH_VERSION}"], check=True
            )
    return executable


def git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=biozoo tests", "-c", "user.email=tests@biozoo.invalid"]
    result = subprocess.run(
        ["git", *identity, *args], cwd=folder, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def commit_checkpoint(repo: Path, checkpoint: Path, message: str) -> str:
    """Commit the files of `checkpoint` into the git folder `repo`, safetensors as LFS
    pointers with their objects in ``.git/lfs/objects``; returns the commit SHA."""
    for old in repo.glob("*.safetensors"):
        old.unlink()
    for path in sorted(checkpoint.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = lfs_pointer(repo, data)
        (repo / path.name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def lfs_pointer(repo: Path, data: bytes) -> bytes:
    """Store `data` as a git-LFS object of the git folder `repo`; returns its pointer file."""
    oid = hashlib.sha256(data).hexdigest()
    obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
    )


def new_git_repo(mirrors: Path, repo_id: str) -> Path:
    repo = mirrors / "models" / repo_id
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return repo


def start_olah(mirrors: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    """Start olah offline on 127.0.0.1, serving the git folders under `mirrors`."""
    executable = olah_executable()
    port = free_port()
    config = scratch / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'repos-path = "{scratch / "olah-cache"}"\n'
        f'mirrors-path = ["{mirrors}"]\n'
        f'mirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\n'
        "[accessibility]\n"
        "offline = true\n"
    )
    process = subprocess.Popen(
        [str(executable), "-c", str(config)],
        cwd=scratch,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{endpoint}/api/models/none/none", process)
    return process, endpoint


def start_fake_hub(root: Path, token: str) -> tuple[subprocess.Popen, str]:
    """Start tests/hub_server.py with state under `root`, accepting `token` for writes."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "hub_server.py"), str(root), token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        stop(process)
        raise RuntimeError(f"hub_server.py did not start: {line!r} {process.stderr.read()}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


def point_client_at(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, cache: Path, *, offline: bool = False
) -> None:
    """Make ``huggingface_hub`` in this process behave as if started with ``HF_ENDPOINT``,
    ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_XET=1`` set."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def client_environment(endpoint: str, cache: Path, token: str | None = None) -> dict[str, str]:
    """Environment variables of a fresh process using `endpoint` and `cache`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pkl")


def commit_files(repo: Path, files: dict[str, bytes], message: str) -> str:
    """Commit `files` (repository path -> bytes, in any folder) into the git folder `repo`,
    replacing what it held; weights and pickles (`LFS_SUFFIXES`) become git-LFS pointers
    with their objects in ``.git/lfs/objects``, as on the Hub. Returns the commit SHA."""
    for old in repo.iterdir():
        if old.is_dir() and old.name != ".git":
            shutil.rmtree(old)
        elif old.is_file():
            old.unlink()
    (repo / ".gitattributes").write_text(
        "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
    )
    for name, data in sorted(files.items()):
        if name.endswith(LFS_SUFFIXES):
            data = lfs_pointer(repo, data)
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
