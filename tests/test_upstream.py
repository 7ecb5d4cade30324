"""Upstream fingerprints of a custom dataset: a changed source is noticed and fetched, an unchanged
one costs no download (python -m pipeline upstream, run by scripts/retrain.sh)."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import artifacts
from pipeline.config import parse_params
from pipeline.data import fetch, upstream
from pipeline.data.datasets import FILES, TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.paths import PROMOTION_FILE, RAW_DIR, UPSTREAM_FILE
from tests.helpers import write_dataset

CUSTOM = parse_params({"data": {"name": "custom"}})


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (Last-Modified and Content-Length, no ETag) and counts GETs per file."""

    gets: dict[str, int]

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.gets[name] = self.gets.get(name, 0) + 1
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, int]]]:
    folder = write_dataset(tmp_path / "served")
    gets: dict[str, int] = {}
    handler = type("Handler", (CountingHandler,), {"gets": gets})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder, gets
    server.shutdown()
    server.server_close()


def bigger(folder: Path, tmp_path: Path) -> None:
    """Replace the training files by those of a larger dataset."""
    source = write_dataset(tmp_path / "bigger", n_train=900, seed=7)
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        (folder / name).write_bytes((source / name).read_bytes())


def test_an_unchanged_http_mirror_costs_heads_only_and_a_changed_file_is_refetched(
    workdir: Path, http_mirror, tmp_path: Path
) -> None:
    url, folder, gets = http_mirror
    env = {"MNIST_MIRROR": url}
    assert upstream.refresh(CUSTOM, env) == list(FILES)
    manifest = UPSTREAM_FILE.read_bytes()
    assert set(json.loads(manifest)["files"][TRAIN_IMAGES]) == {"last_modified", "bytes"}
    assert gets == {}, "fingerprinting must not download"
    fetch.download(CUSTOM, RAW_DIR, env, artifacts.read_upstream())
    assert gets == {name: 1 for name in FILES}

    assert upstream.refresh(CUSTOM, env) == []
    assert UPSTREAM_FILE.read_bytes() == manifest, (
        "an unchanged mirror leaves the manifest byte-identical"
    )
    fetch.download(CUSTOM, RAW_DIR, env, artifacts.read_upstream())
    assert gets == {name: 1 for name in FILES}, "nothing fetched twice"

    bigger(folder, tmp_path)
    assert upstream.refresh(CUSTOM, env) == [TRAIN_IMAGES, TRAIN_LABELS]
    record = fetch.download(CUSTOM, RAW_DIR, env, artifacts.read_upstream())
    assert gets == {TRAIN_IMAGES: 2, TRAIN_LABELS: 2, **{n: 1 for n in FILES if "train" not in n}}
    assert (RAW_DIR / TRAIN_IMAGES).read_bytes() == (folder / TRAIN_IMAGES).read_bytes()
    assert record["files"][TRAIN_IMAGES]["bytes"] == (folder / TRAIN_IMAGES).stat().st_size


def test_a_local_folder_is_rehashed_and_an_unreachable_source_keeps_the_manifest(
    workdir: Path, synthetic_mirror: Path
) -> None:
    assert upstream.refresh(CUSTOM, {"MNIST_MIRROR": str(synthetic_mirror)}) == list(FILES)
    manifest = UPSTREAM_FILE.read_bytes()
    (synthetic_mirror / TEST_IMAGES).write_bytes(
        (synthetic_mirror / TEST_IMAGES).read_bytes() + b"\0"
    )
    assert upstream.refresh(CUSTOM, {"MNIST_MIRROR": f"file://{synthetic_mirror}"}) == [TEST_IMAGES]
    changed = UPSTREAM_FILE.read_bytes()
    assert changed != manifest
    offline = parse_params({"data": {"name": "custom", "mirrors": ["http://127.0.0.1:9/"]}})
    assert upstream.refresh(offline, {}) == []
    assert UPSTREAM_FILE.read_bytes() == changed


def test_an_unusable_mirror_url_is_named_and_the_manifest_kept(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check as download's (tests/test_download.py), so no traceback mid-request."""
    artifacts.write_upstream({TEST_IMAGES: {"sha256": "0" * 64}})
    kept = UPSTREAM_FILE.read_bytes()
    monkeypatch.setenv("MNIST_MIRROR", "http://127.0.0.1:8711/données/")
    upstream.main(CUSTOM)
    assert capsys.readouterr().err == (
        "upstream: not checked (MNIST_MIRROR is 'http://127.0.0.1:8711/données/', whose path has "
        "the non-ASCII 'é', which HTTP cannot send; percent-encode it (as %C3%A9)); keeping "
        f"{UPSTREAM_FILE}\n"
    )
    assert UPSTREAM_FILE.read_bytes() == kept


def test_pinned_checksums_need_no_check(workdir: Path) -> None:
    assert upstream.refresh(parse_params({}), {}) == []  # official MNIST: no request at all
    assert json.loads(UPSTREAM_FILE.read_text()) == {"files": {}}


@pytest.mark.slow
def test_scheduled_retrain_notices_a_bigger_dataset_on_the_mirror(
    dvc_project: Path, http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/retrain.sh on an HTTP custom mirror; then the training files are replaced by a bigger
    dataset and the next scheduled run fetches, validates and trains on them and says so."""
    url, folder, gets = http_mirror
    monkeypatch.setenv("MNIST_MIRROR", url)

    def retrain() -> str:
        result = subprocess.run(
            ["scripts/retrain.sh"], check=False, capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    retrain()
    assert gets == {name: 1 for name in FILES}
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-q", "-m", "first retrain"], check=True)

    bigger(folder, tmp_path)
    output = retrain()
    assert "upstream: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz changed" in output
    for stage in ("download", "validate", "train"):
        assert f"Running stage '{stage}'" in output
    assert gets == {TRAIN_IMAGES: 2, TRAIN_LABELS: 2, **{n: 1 for n in FILES if "train" not in n}}
    record = json.loads(PROMOTION_FILE.read_text())
    assert record["data_changed_since_champion"] == [TRAIN_IMAGES, TRAIN_LABELS]
    split = json.loads(Path("data/split/summary.json").read_text())
    assert split["counts"]["train"] + split["counts"]["valid"] == 900
