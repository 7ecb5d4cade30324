"""Write files so that readers see the old content or the new, never half of either.

Also after a power loss: the temp file is fsynced before the rename (else the rename can reach
the disk before the data, leaving an empty file), and the folder after it (else the rename
itself can be lost).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error delete it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from None
    tmp_path = Path(tmp)
    try:  # from here on, whatever happens (a SIGTERM too) removes the temp file
        os.close(fd)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        yield tmp_path
        _fsync(tmp_path)
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise _unwritable(path, exc) from None
        _fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's or folder's contents to disk (a read-only descriptor suffices on Linux)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwritable(path: Path, exc: OSError) -> PipelineError:
    """What is in the way of writing the file `path`: a folder of that name, or its folder."""
    if path.is_dir():
        return PipelineError(
            f"cannot write {path}: it is a folder, not a file; move it away and rerun the stage"
        )
    return _blocked(path, path.parent, exc)


def _blocked(path: Path, folder: Path, exc: OSError) -> PipelineError:
    """Why `path` cannot be written in `folder`: a file where a folder should be, or the nearest
    folder that exists is read-only."""
    nearest = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not nearest.is_dir():
        return PipelineError(
            f"cannot write {path}: {nearest} is a file, not a folder; move it away and rerun the "
            "stage"
        )
    return PipelineError(
        f"cannot write {path}: {nearest} is not writable ({exc.strerror or exc}); "
        "fix its permissions and rerun the stage"
    )


@contextmanager
def writable_dir(folder: Path) -> Iterator[None]:
    """Create `folder` if missing, then run the block that adds or removes entries in it (temp
    files a killed run left, a staging folder): an OSError from either says what is in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as exc:
        raise _blocked(folder, folder, exc) from None


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
