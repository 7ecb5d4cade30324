"""The Get started page runs as written (slow): each of its shell blocks, in order, in a fresh
copy of the project on the tiny synthetic data. A block the test cannot run says why, in a
`<!-- not run: reason -->` line above it; a server block is started in the background."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*) -->\n)?```bash\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[str, str]]:
    return [(m["mark"] or "", m["code"]) for m in BLOCK.finditer(PAGE.read_text())]


def test_every_block_is_run_or_says_why_not() -> None:
    marks = [mark for mark, _ in blocks() if mark]
    assert all(re.fullmatch(r"(not run|run in the background): \S.+", m) for m in marks), marks
    assert sum(not mark for mark, _ in blocks()) >= 4


@pytest.mark.slow
def test_the_tutorial_runs_as_written(dvc_project: Path) -> None:
    server = None
    try:
        for mark, code in blocks():
            if mark.startswith("not run"):
                continue
            if mark.startswith("run in the background"):
                server = subprocess.Popen(
                    ["bash", "-c", code],
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                port = re.search(r"-p (\d+)", code)[1]  # type: ignore[index]
                wait_for(f"http://127.0.0.1:{port}/ping")
                continue
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            if "curl" in code:
                assert '"digit"' in done.stdout, done.stdout
            if "monitor" in code:
                assert "monitor:" in done.stdout + done.stderr
    finally:
        if server:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(1)
