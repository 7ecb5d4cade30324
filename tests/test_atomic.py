"""pipeline/atomic.py: the new content lands whole, and on the disk before and after the rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import atomic


def test_file_then_folder_are_synced_around_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    synced = []  # (inode synced, what a reader of target saw at that moment)

    def record(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, target.read_text()))

    monkeypatch.setattr(atomic.os, "fsync", record)
    atomic.write_text(target, "new")
    # The temp file (renamed into place: it has target's inode now) before the rename, the
    # folder after it.
    assert synced == [(target.stat().st_ino, "old"), (target.parent.stat().st_ino, "new")]


def test_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
