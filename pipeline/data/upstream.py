"""`python -m pipeline upstream`: fingerprint a custom dataset's files at their source, so that a
scheduled retrain notices new upstream data.

DVC reruns the download stage only when its deps change, and the files behind a custom mirror
can change at any time. So scripts/retrain.sh runs this first: it writes data/upstream.json
(git-tracked, a dep of download) with each unpinned file's ETag, Last-Modified and size from an
HTTP HEAD, or its SHA-256 for a local folder or file:// URL. The file is rewritten only when a
fingerprint changed, so an unchanged mirror costs a HEAD per file and no download; a changed one
makes download fetch exactly the changed files (download compares the fingerprint each file was
fetched under). Files with known checksums (official datasets, data.md5) need no check.
When no source answers (an offline machine working from `dvc pull`), the last manifest is kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data.datasets import FILES
from pipeline.data.fetch import expected_checksums, http_request, redact, source_url, sources_for
from pipeline.errors import PipelineError
from pipeline.paths import UPSTREAM_FILE
from pipeline.progress import log

_CHUNK = 1 << 16
_HEADERS = {"ETag": "etag", "Last-Modified": "last_modified", "Content-Length": "bytes"}


class Unreachable(Exception):
    """This source cannot fingerprint a file; the next source is tried."""


def _sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def fingerprint(location: str, timeout_s: float) -> dict[str, str]:
    """What identifies the current content of one file without downloading it where possible."""
    if "://" not in location or location.startswith("file://"):
        path = Path(
            urllib.request.url2pathname(location.removeprefix("file://"))
            if "://" in location
            else location
        )
        try:
            with open(path, "rb") as stream:
                return {"sha256": _sha256(stream)}
        except OSError as exc:
            raise Unreachable(f"{path}: {exc.strerror}") from None
    request = http_request(location)
    request.method = "HEAD"
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            found = {
                key: response.headers[name]
                for name, key in _HEADERS.items()
                if response.headers.get(name)
            }
        if "etag" in found or "last_modified" in found:
            return found
        # A server that gives no validator: only the bytes themselves tell.
        with urllib.request.urlopen(http_request(location), timeout=timeout_s) as response:
            return {"sha256": _sha256(response)}
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{redact(location)}: {getattr(exc, 'reason', exc)}") from None


def current(params: Params, env: dict[str, str]) -> dict[str, dict[str, str]] | None:
    """Fingerprints of the unpinned files at the first source having them all; None if none does."""
    unpinned = [f for f, e in expected_checksums(params).items() if not (e.md5 or e.sha256)]
    if not unpinned:
        return {}
    problems = []
    for source in sources_for(params, env):
        try:
            return {f: fingerprint(source_url(source, f), params.data.timeout_s) for f in unpinned}
        except Unreachable as exc:
            problems.append(str(exc))
    log(f"upstream: no source answered ({'; '.join(problems)}); keeping {UPSTREAM_FILE}")
    return None


def refresh(params: Params, env: dict[str, str], path: Path = UPSTREAM_FILE) -> list[str]:
    """Rewrite the manifest if a fingerprint changed; returns the changed file names."""
    found = current(params, env)
    before = artifacts.read_upstream(path)
    if found is None:
        if not path.exists():
            artifacts.write_upstream(before, path)
        return []
    changed = [f for f in FILES if found.get(f) != before.get(f)]
    if changed or not path.exists():
        artifacts.write_upstream(found, path)
    log(f"upstream: {', '.join(changed) + ' changed' if changed else 'no file changed'} ({path})")
    return changed


def main(params: Params) -> None:
    try:
        refresh(params, dict(os.environ))
    except PipelineError as exc:  # no source configured at all: nothing to compare with
        log(f"upstream: not checked ({exc}); keeping {UPSTREAM_FILE}")
