"""The tutorial and the how-to guides run as written (slow): every shell and Python block of
those pages, page after page, in one fresh copy of the project on the tiny synthetic data, as a
reader who follows Get started and then the guides would run them. A block the test cannot run
says why in a `<!-- not run: reason -->` line above it; a server block says
`<!-- run in the background: reason -->` and keeps running for the pages after it. Placeholders
a reader fills in (`<run id>`, `<name>`) are filled from what the earlier blocks made."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(
    r"(?:<!-- (?P<mark>[^>]*) -->\n)?```(?P<language>bash|python)\n(?P<code>.*?)```", re.S
)
MARK = re.compile(r"(not run|run in the background): \S.+")
PLACEHOLDER = re.compile(r"<(run id|name)>")


def pages() -> list[Path]:
    """The Tutorial's and the How-to guides' pages, in the nav's order."""
    nav = yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text())["nav"]
    sections = {next(iter(entry)): next(iter(entry.values())) for entry in nav}
    entries = [*sections["Tutorial"], *sections["How-to guides"]]
    return [DOCS / next(iter(entry.values())) for entry in entries]


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(mark, language, code) of each shell and Python block of a page."""
    return [(m["mark"] or "", m["language"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def test_every_block_is_run_or_says_why_not() -> None:
    marks = [mark for page in pages() for mark, _, _ in blocks(page) if mark]
    assert all(MARK.fullmatch(mark) for mark in marks), marks
    run = [code for page in pages() for mark, _, code in blocks(page) if not mark]
    assert len(run) >= 12  # most blocks run; the marked ones are servers, clusters, Docker


def fill_placeholders(code: str) -> str:
    """What a reader types in place of `<run id>` and `<name>`: the run the last experiment
    logged (its reports/promotion.json) and that experiment's name."""
    if "<run id>" in code:
        code = code.replace(
            "<run id>", json.loads(Path("reports/promotion.json").read_text())["run_id"]
        )
    if "<name>" in code:
        names = run_ok("dvc exp ls --name-only").split()
        code = code.replace("<name>", names[0])
    return code


def run_block(code: str, language: str) -> str:
    """A block as a reader runs it: the lines before a placeholder first, since they make what
    fills it."""
    lines = code.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if PLACEHOLDER.search(line)), len(lines))
    output = run_ok("".join(lines[:first]), language) if first else ""
    if first < len(lines):
        output += run_ok(fill_placeholders("".join(lines[first:])), language)
    return output


def run_ok(code: str, language: str = "bash") -> str:
    """Run the code; each `pipeline monitor` line alone, since its exit status 3 reports drift
    (docs/monitoring.md) rather than a failure."""
    if language == "bash" and "pipeline monitor" in code:
        lines = [line for line in code.splitlines() if line.strip()]
        return "".join(run_command(["bash", "-c", line], line, (0, 3)) for line in lines)
    if language == "python":
        return run_command([sys.executable, "-c", code], code)
    return run_command(["bash", "-euo", "pipefail", "-c", code], code)


def run_command(command: list[str], code: str, allowed: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode in allowed, f"{code}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def files_a_reader_has() -> None:
    """The pictures and the IDX file the how-to pages assume the reader holds."""
    from PIL import Image

    Image.open("digit.png").convert("RGB").save("scan.jpg", quality=90)
    shutil.copy("data/raw/t10k-images-idx3-ubyte.gz", ".")


def wait_for_the_queue() -> None:
    """Experiments say to watch `dvc queue status` until none is Queued or Running."""
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", run_ok("dvc queue status")):
        assert time.monotonic() < deadline, "the queued experiments never finished"
        time.sleep(3)


@pytest.mark.slow
def test_the_tutorial_and_how_to_guides_run_as_written(
    dvc_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MNIST_RECORDS")  # a reader's records go to the default ./records
    servers = []
    try:
        for page in pages():
            if page.name != "getting-started.md" and not Path("scan.jpg").exists():
                files_a_reader_has()
            for mark, language, code in blocks(page):
                if mark.startswith("not run"):
                    continue
                if mark.startswith("run in the background"):
                    servers.append(
                        subprocess.Popen(
                            ["bash", "-c", code],
                            start_new_session=True,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                    port = re.search(r"-p (\d+)", code)[1]  # type: ignore[index]
                    wait_for(f"http://127.0.0.1:{port}/ping")
                    continue
                output = run_block(code, language)
                if "curl" in code or "urlopen" in code:
                    assert re.search(r'"digit"|^\[\d, \d\]$', output, re.M), output
                if "pipeline monitor" in code:
                    assert "monitor:" in output
                if "dvc queue start" in code:
                    wait_for_the_queue()
        # every name the pipeline wrote into MLflow is on the MLflow names page
        generator = DOCS / "gen" / "gen_mlflow_doc.py"
        run_ok(f"{sys.executable} {generator} --store sqlite:///mlflow.db")
    finally:
        for server in servers:
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
