"""Stage `download`: fetch the four IDX files into data/raw/, verified, from the first mirror that works.

Sources are tried in order: $MNIST_MIRROR, then `data.mirrors` (or the dataset's official
mirrors). A source is a local folder, a file:// URL or an http(s) URL. pooch was considered, but
it handles neither file:// URLs nor an ordered mirror list, so this is plain urllib.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic
from pipeline.config import Params
from pipeline.datasets import DATASETS, FILES
from pipeline.errors import PipelineError
from pipeline.idx import parse_idx
from pipeline.paths import CHECKSUMS_FILE, RAW_DIR
from pipeline.progress import bar, log

MIRROR_ENV = "MNIST_MIRROR"
_CHUNK = 1 << 16


class FetchError(Exception):
    """One attempt at one source failed; `retry` says whether trying the same source again may help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


@dataclass(frozen=True)
class Expected:
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Digests:
    md5: str
    sha256: str
    size: int


def digests_of(path: Path) -> Digests:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return Digests(md5.hexdigest(), sha.hexdigest(), path.stat().st_size)


def mismatch(found: Digests, expected: Expected) -> str | None:
    if expected.md5 and found.md5 != expected.md5.lower():
        return f"MD5 {found.md5} != expected {expected.md5}"
    if expected.sha256 and found.sha256 != expected.sha256.lower():
        return f"SHA-256 {found.sha256} != expected {expected.sha256}"
    return None


def redact(location: str) -> str:
    """Drop user:password@ from a URL so that credentials never reach logs or checksums.json."""
    parts = urllib.parse.urlsplit(location)
    if parts.username is None and parts.password is None:
        return location
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def source_url(source: str, fname: str) -> str:
    """The URL (or local path) of `fname` under a mirror given as folder, file:// or http(s) URL."""
    if "://" in source:
        return source.rstrip("/") + "/" + fname
    return str(Path(source).expanduser() / fname)


def _copy_stream(stream, dest: Path, total: int | None, label: str) -> int:
    written = 0
    with open(dest, "wb") as out, bar(total=total, unit="B", unit_scale=True, desc=label, leave=False) as progress:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            written += len(chunk)
            progress.update(len(chunk))
    return written


def fetch_once(location: str, dest: Path, timeout_s: float) -> None:
    """Copy one file from a local path or URL to `dest`; raise FetchError with the reason."""
    if "://" not in location:
        if not Path(location).is_file():
            raise FetchError(f"no file at {location}", retry=False)
        shutil.copyfile(location, dest)
        return
    try:
        with urllib.request.urlopen(location, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written = _copy_stream(response, dest, total, Path(location).name)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500 or exc.code in (408, 429)) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise FetchError(f"timed out after {timeout_s:g} s", retry=True) from None
        if isinstance(reason, FileNotFoundError):
            raise FetchError(f"no file at {location}", retry=False) from None
        raise FetchError(f"unreachable ({reason})", retry=True) from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"timed out after {timeout_s:g} s", retry=True) from None
    except (ConnectionError, OSError) as exc:
        raise FetchError(f"connection broke ({exc})", retry=True) from None
    if total is not None and written != total:
        raise FetchError(f"truncated body: got {written} of {total} bytes", retry=True)


def accept(path: Path, fname: str, expected: Expected) -> Digests:
    """Checksums must match when known; either way the file must parse as IDX."""
    found = digests_of(path)
    problem = mismatch(found, expected)
    if problem:
        raise FetchError(f"wrong bytes: {problem}", retry=False)
    try:
        parse_idx(path.read_bytes(), fname)
    except PipelineError as exc:
        raise FetchError(f"not a valid IDX file: {exc}", retry=False) from None
    return found


def fetch_verified(
    fname: str,
    sources: list[str],
    dest_dir: Path,
    expected: Expected,
    timeout_s: float,
    retries: int,
    dead: dict[str, str],
) -> tuple[Digests, str]:
    """Try each source in order (with retries and backoff) until one yields verified bytes.

    `dead` maps sources that were unreachable for an earlier file to their reason, so that an
    offline machine fails in seconds instead of retrying every file on every mirror.
    """
    failures: list[str] = []
    for source in sources:
        if source in dead:
            failures.append(f"{redact(source)}: {dead[source]}")
            continue
        location = source_url(source, fname)
        for attempt in range(retries + 1):
            try:
                with atomic.atomic_path(dest_dir / fname) as tmp:
                    fetch_once(location, tmp, timeout_s)
                    found = accept(tmp, fname, expected)
                return found, redact(location)
            except FetchError as exc:
                reason = str(exc)
                if not exc.retry or attempt == retries:
                    break
                time.sleep(0.5 * 2**attempt)
        failures.append(f"{redact(source)}: {reason}")
        if reason.startswith("unreachable") or reason.startswith("timed out"):
            dead[source] = reason
    tried = "; ".join(failures) or "no sources configured"
    raise PipelineError(
        f"could not fetch {fname} from any source ({tried}). "
        f"Set {MIRROR_ENV} to a folder or URL that holds the four IDX files, "
        f"e.g. {MIRROR_ENV}=/path/to/mnist dvc repro download"
    )


def sources_for(params: Params, env: dict[str, str]) -> list[str]:
    configured = list(params.data.mirrors)
    if not configured and params.data.name != "custom":
        configured = list(DATASETS[params.data.name].mirrors)
    mirror = env.get(MIRROR_ENV, "").strip()
    sources = ([mirror] if mirror else []) + configured
    if not sources:
        raise PipelineError(
            f"data.name is custom but no source is given; set data.mirrors or {MIRROR_ENV}"
        )
    return sources


def expected_for(params: Params, fname: str) -> Expected:
    if params.data.name == "custom":
        return Expected(md5=(params.data.md5 or {}).get(fname))
    spec = DATASETS[params.data.name]
    return Expected(md5=spec.md5[fname], sha256=spec.sha256.get(fname))


def already_verified(path: Path, expected: Expected, recorded: dict) -> Digests | None:
    """A file already in place is kept when it matches the known or previously recorded checksums."""
    if not path.is_file():
        return None
    if not (expected.md5 or expected.sha256):
        expected = Expected(md5=recorded.get("md5"), sha256=recorded.get("sha256"))
        if not (expected.md5 or expected.sha256):
            return None
    found = digests_of(path)
    return None if mismatch(found, expected) else found


def download(params: Params, raw_dir: Path, env: dict[str, str]) -> dict:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for leftover in raw_dir.glob(".*.tmp"):
        leftover.unlink()  # from a run that was killed before it could clean up
    checksums_path = raw_dir / CHECKSUMS_FILE.name
    previous = _read_previous(checksums_path, params.data.name)
    sources = sources_for(params, env)
    dead: dict[str, str] = {}
    record: dict[str, dict] = {}
    for fname in FILES:
        expected = expected_for(params, fname)
        found = already_verified(raw_dir / fname, expected, previous.get(fname, {}))
        origin = previous.get(fname, {}).get("source", "already present")
        if found:
            log(f"{fname}: already present and verified")
        else:
            found, origin = fetch_verified(
                fname, sources, raw_dir, expected, params.data.timeout_s, params.data.retries, dead
            )
            log(f"{fname}: {found.size:,} bytes from {origin}, MD5 {found.md5}")
        record[fname] = {"md5": found.md5, "sha256": found.sha256, "bytes": found.size, "source": origin}
    result = {"dataset": params.data.name, "files": record}
    atomic.write_json(checksums_path, result)
    return result


def _read_previous(path: Path, dataset: str) -> dict:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous.get("files", {}) if previous.get("dataset") == dataset else {}


def main(params: Params) -> None:
    download(params, RAW_DIR, dict(os.environ))
