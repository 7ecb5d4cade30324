"""Fetch a dataset's four IDX files, verified, from the first working mirror: the download stage's
work, and what `python -m pipeline upstream` asks of the sources.

Sources are tried in order: $MNIST_MIRROR, then `data.mirrors` (or the dataset's official
mirrors). A source is a local folder, a file:// URL or an http(s) URL. pooch was considered, but
it handles neither file:// URLs nor an ordered mirror list, so this is plain urllib.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline import artifacts, atomic
from pipeline.config import Params
from pipeline.data.datasets import DATASETS, FILES
from pipeline.data.idx import parse_idx
from pipeline.errors import PipelineError
from pipeline.paths import CHECKSUMS_FILE
from pipeline.progress import bar, log

MIRROR_ENV = "MNIST_MIRROR"
BACKOFF_S = 0.5  # pause before the first retry of a source; doubles for each further retry
_CHUNK = 1 << 16


class FetchError(Exception):
    """One attempt at one source failed.

    `retry`: trying the same source again may help (server error, dropped connection).
    `down`: the source as a whole is unusable (no such host or folder, refused, silent), so the
    remaining files skip it and an offline machine fails in seconds instead of waiting per file.
    """

    def __init__(self, reason: str, retry: bool = False, down: bool = False) -> None:
        super().__init__(reason)
        self.retry = retry
        self.down = down


@dataclass(frozen=True)
class Expected:
    md5: str | None = None
    sha256: str | None = None
    basis: str = "none (observed checksums recorded)"


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
    if "@" not in parts.netloc:
        return location
    # Host and port as written: .hostname would drop an IPv6 address's brackets.
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def source_url(source: str, fname: str) -> str:
    """The URL (or local path) of `fname` under a mirror given as folder, file:// or http(s) URL."""
    if "://" in source:
        return source.rstrip("/") + "/" + fname
    return str(Path(source).expanduser() / fname)


def http_request(location: str) -> urllib.request.Request:
    """urllib cannot take user:password@ from the URL itself, so send it as HTTP basic auth."""
    parts = urllib.parse.urlsplit(location)
    request = urllib.request.Request(redact(location))
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def _copy_stream(stream: BinaryIO, dest: Path, total: int | None, label: str) -> int:
    written = 0
    with (
        open(dest, "wb") as out,
        bar(total=total, unit="B", unit_scale=True, desc=label, leave=False) as progress,
    ):
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            written += len(chunk)
            progress.update(len(chunk))
    return written


def _copy_local(location: str, dest: Path) -> None:
    source = Path(location)
    if not source.parent.is_dir():
        raise FetchError(f"no folder {source.parent}", down=True)
    if not source.is_file():
        raise FetchError(f"no file {source.name} there")
    try:
        with open(source, "rb") as stream:
            _copy_stream(stream, dest, source.stat().st_size, source.name)
    except OSError as exc:
        raise FetchError(f"cannot copy {source} ({exc.strerror})") from None


def _connection_failure(reason: object, timeout_s: float) -> FetchError:
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return FetchError(f"timed out after {timeout_s:g} s", down=True)
    if isinstance(reason, FileNotFoundError):  # file:// URL
        return FetchError("no such file")
    if isinstance(reason, socket.gaierror):
        return FetchError(f"host not found ({reason.strerror})", down=True)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return FetchError(f"TLS certificate rejected ({reason.verify_message})", down=True)
    if isinstance(reason, ConnectionRefusedError):
        return FetchError("connection refused", retry=True, down=True)
    if isinstance(reason, str):  # urllib's own complaint, e.g. a file:// URL on another host
        return FetchError(f"unusable URL ({reason})", down=True)
    return FetchError(f"connection broke ({reason})", retry=True)


def fetch_once(location: str, dest: Path, timeout_s: float) -> None:
    """Copy one file from a local path or URL to `dest`; raise FetchError with the reason.

    `timeout_s` bounds connecting and each wait for data, so a stalled server is abandoned.
    """
    if "://" not in location:
        _copy_local(location, dest)
        return
    try:
        with urllib.request.urlopen(http_request(location), timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written = _copy_stream(response, dest, total, Path(location).name)
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in (408, 429)
        raise FetchError(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
    except urllib.error.URLError as exc:
        raise _connection_failure(exc.reason, timeout_s) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _connection_failure(exc, timeout_s) from None
    if total is not None and written != total:
        raise FetchError(f"truncated body: got {written} of {total} bytes", retry=True)


def accept(path: Path, fname: str, expected: Expected) -> Digests:
    """Checksums must match when known; either way the file must parse as IDX."""
    found = digests_of(path)
    problem = mismatch(found, expected)
    if problem:
        raise FetchError(f"wrong bytes: {problem}")
    try:
        parse_idx(path.read_bytes(), fname)
    except PipelineError as exc:
        raise FetchError(f"not a valid IDX file: {exc}") from None
    return found


def fetch_verified(
    fname: str,
    sources: list[str],
    dest_dir: Path,
    expected: Expected,
    timeout_s: float,
    retries: int,
    down: dict[str, str],
) -> tuple[Digests, str]:
    """Try each source in order (with retries and backoff) until one yields verified bytes.

    `down` maps sources found unusable for an earlier file to the reason; they are not tried again.
    """
    failures: list[str] = []
    for source in sources:
        if source in down:
            failures.append(f"{redact(source)}: {down[source]}")
            continue
        location = source_url(source, fname)
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                with atomic.atomic_path(dest_dir / fname) as tmp:
                    fetch_once(location, tmp, timeout_s)
                    found = accept(tmp, fname, expected)
                return found, redact(location)
            except FetchError as exc:
                error = exc
                if not exc.retry:
                    break
        tries = f" ({attempt + 1} tries)" if attempt else ""
        failures.append(f"{redact(source)}: {error}{tries}")
        if error.down:
            down[source] = str(error)
    raise PipelineError(
        f"could not fetch {fname} from any source ({'; '.join(failures)}). "
        f"Set {MIRROR_ENV} to a folder or URL that holds the four IDX files, "
        f"e.g. {MIRROR_ENV}=/path/to/mnist dvc repro download"
    )


def _check_url(name: str, url: str) -> None:
    """Reject a URL that urllib would fail on mid-download with a traceback, naming the setting
    (`name`) that gave it: a host or port that does not parse, a scheme it cannot fetch, or
    non-ASCII in an HTTP path."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # its message may quote user:password@, so it is not shown
        raise PipelineError(
            f"{name} is not a valid URL: its host does not parse (an unclosed [ of an IPv6 "
            "address?); correct it, e.g. http://host:8080/mnist/ or http://[::1]:8080/mnist/"
        ) from None
    try:
        bad_port = parts.port == 0
    except ValueError:  # .port parses the port only when asked for
        bad_port = True
    if bad_port:
        raise PipelineError(
            f"{name} is {redact(url)!r}, whose port is not a number from 1 to 65535; correct it"
        )
    if parts.scheme not in ("file", "http", "https"):
        raise PipelineError(
            f"{name} is {redact(url)!r}; use a folder, a file:// URL or an http(s):// URL"
        )
    unsendable = [c for c in parts.path + parts.query if not c.isascii()]
    if parts.scheme != "file" and unsendable:  # a file:// path is opened, never sent
        raise PipelineError(
            f"{name} is {redact(url)!r}, whose path has the non-ASCII {unsendable[0]!r}, which "
            f"HTTP cannot send; percent-encode it (as {urllib.parse.quote(unsendable[0])})"
        )


def sources_for(params: Params, env: dict[str, str]) -> list[str]:
    configured = list(params.data.mirrors)
    if not configured and params.data.name != "custom":
        configured = list(DATASETS[params.data.name].mirrors)
    mirror = env.get(MIRROR_ENV, "").strip()
    named = [(MIRROR_ENV, mirror)] if mirror else []
    named += [(f"data.mirrors[{i}]", source) for i, source in enumerate(configured)]
    for name, source in named:
        if "://" in source:
            _check_url(name, source)
    sources = list(dict.fromkeys(source for _, source in named))
    if not sources:
        raise PipelineError(
            f"data.name is custom but no source is given; set data.mirrors or {MIRROR_ENV}"
        )
    return sources


def expected_checksums(params: Params) -> dict[str, Expected]:
    """What each file must hash to: official checksums, or data.md5 (maybe partial) for custom."""
    if params.data.name != "custom":
        spec = DATASETS[params.data.name]
        basis = "official MD5" + (" and SHA-256" if spec.sha256 else "")
        return {f: Expected(md5=spec.md5[f], sha256=spec.sha256.get(f), basis=basis) for f in FILES}
    given = params.data.md5 or {}
    unknown = sorted(set(given) - set(FILES))
    if unknown:
        raise PipelineError(
            f"data.md5 names unknown file(s) {', '.join(unknown)} (allowed: {', '.join(FILES)})"
        )
    return {
        f: Expected(md5=given[f], basis="data.md5") if f in given else Expected() for f in FILES
    }


def already_verified(
    path: Path, expected: Expected, recorded: dict, locations: set[str]
) -> Digests | None:
    """A file in place is kept when it matches the known checksums or, lacking those, the ones
    recorded when it was fetched from one of the current sources (not from some other dataset)."""
    if not path.is_file():
        return None
    if not (expected.md5 or expected.sha256):
        if recorded.get("source") not in locations:
            return None
        expected = Expected(md5=recorded.get("md5"), sha256=recorded.get("sha256"))
        if not (expected.md5 or expected.sha256):
            return None
    found = digests_of(path)
    return None if mismatch(found, expected) else found


def download(
    params: Params,
    raw_dir: Path,
    env: dict[str, str],
    upstream: dict[str, dict[str, str]] | None = None,
) -> artifacts.Checksums:
    """`upstream`: file name -> the fingerprint its source shows now; a file fetched under another
    fingerprint is fetched again, since the source's content changed."""
    upstream = upstream or {}
    expected = expected_checksums(params)
    sources = sources_for(params, env)
    with atomic.writable_dir(raw_dir):
        for leftover in raw_dir.glob(".*.tmp"):
            leftover.unlink()  # from a run that was killed before it could clean up
    checksums_path = raw_dir / CHECKSUMS_FILE.name
    previous = _read_previous(checksums_path, params.data.name)
    down: dict[str, str] = {}
    record: dict[str, artifacts.FileChecksums] = {}
    for fname in FILES:
        recorded = previous.get(fname, {})
        locations = {redact(source_url(source, fname)) for source in sources}
        found = already_verified(raw_dir / fname, expected[fname], recorded, locations)
        if found and fname in upstream and recorded.get("upstream") != upstream[fname]:
            log(f"{fname}: changed at the source since it was fetched; fetching it again")
            found = None
        if found:
            origin = recorded.get("source", "already present")
            log(f"{fname}: already present and verified")
        else:
            found, origin = fetch_verified(
                fname,
                sources,
                raw_dir,
                expected[fname],
                params.data.timeout_s,
                params.data.retries,
                down,
            )
            log(f"{fname}: {found.size:,} bytes from {origin}, MD5 {found.md5}")
        record[fname] = {
            "md5": found.md5,
            "sha256": found.sha256,
            "bytes": found.size,
            "source": origin,
            "checked_against": expected[fname].basis,
        }
        if fname in upstream:
            record[fname]["upstream"] = upstream[fname]
    result: artifacts.Checksums = {"dataset": params.data.name, "files": record}
    artifacts.write_checksums(result, checksums_path)
    return result


def _read_previous(path: Path, dataset: str) -> dict[str, dict]:
    """What the last run recorded for this dataset; nothing if absent, damaged or for another.

    A damaged entry counts as nothing too: one whose md5, sha256 or source is not a string.
    """
    try:
        previous = artifacts.read_checksums(path)
    except PipelineError:
        return {}
    if previous["dataset"] != dataset:
        return {}
    return {
        name: dict(entry)
        for name, entry in previous["files"].items()
        if all(isinstance(entry.get(key), str) for key in ("md5", "sha256", "source"))
    }
