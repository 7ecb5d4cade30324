"""Download stage against real local sources: an HTTP server on 127.0.0.1, folders and file:// URLs.

No test touches the network. The server misbehaves on purpose, one way per URL prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import parse_params
from pipeline.data import fetch
from pipeline.data.datasets import DATASETS, FILES, TRAIN_IMAGES
from pipeline.errors import PipelineError
from tests.helpers import MIRROR_USER, MirrorServer, free_port, write_dataset

RAW = Path("data/raw")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "source", n_train=40, n_test=20)


@pytest.fixture
def md5s(source: Path) -> dict[str, str]:
    return {f: hashlib.md5((source / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture
def server(source: Path) -> Iterator[MirrorServer]:
    with MirrorServer.of(source) as running:
        yield running


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff pauses are recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", recorded.append)
    return recorded


def run(workdir: Path, env: dict[str, str] | None = None, **data: object) -> dict:
    params = parse_params({"data": {"timeout_s": 0.5, "retries": 0, **data}})
    return fetch.download(params, RAW, env or {})


def custom(mirrors: list[str], md5: dict[str, str] | None = None, **data: object) -> dict:
    return {"name": "custom", "mirrors": mirrors, "md5": md5, **data}


def raw_listing() -> list[str]:
    return sorted(p.name for p in RAW.iterdir()) if RAW.exists() else []


COMPLETE = sorted([*FILES, "checksums.json"])


def test_good_mirror_writes_verified_files_and_checksums(workdir, server, source, md5s):
    result = run(workdir, **custom([server.url("ok")], md5s))
    assert raw_listing() == COMPLETE
    recorded = json.loads((RAW / "checksums.json").read_text())
    assert recorded == result
    for fname in FILES:
        data = (source / fname).read_bytes()
        assert (RAW / fname).read_bytes() == data
        entry = recorded["files"][fname]
        assert entry["md5"] == md5s[fname]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert entry["source"] == server.url("ok") + fname
        assert entry["checked_against"] == "data.md5"


BAD_MODES = {
    "404": "HTTP 404",
    "500": "HTTP 500",
    "wrong": "wrong bytes: MD5",
    "junk": "wrong bytes: MD5",
    "truncated": "truncated body: got",
    "stall": "timed out after 0.5 s",
    "silent": "timed out after 0.5 s",
}


@pytest.mark.parametrize("mode", BAD_MODES)
def test_bad_mirror_is_skipped_for_the_next(workdir, server, md5s, mode, sleeps):
    result = run(workdir, **custom([server.url(mode), server.url("ok")], md5s))
    assert server.hits[mode, TRAIN_IMAGES] == 1
    # A silent server is given up for the remaining files; one that answers is asked again.
    assert server.hits[mode, FILES[1]] == (0 if mode in ("stall", "silent") else 1)
    assert {entry["source"] for entry in result["files"].values()} == {
        server.url("ok") + f for f in FILES
    }
    assert raw_listing() == COMPLETE


@pytest.mark.parametrize("mode", BAD_MODES)
def test_bad_mirror_alone_fails_naming_mirror_and_reason(workdir, server, md5s, mode, sleeps):
    with pytest.raises(PipelineError) as caught:
        run(workdir, **custom([server.url(mode)], md5s))
    message = str(caught.value)
    assert f"{server.url(mode)}: {BAD_MODES[mode]}" in message
    assert "MNIST_MIRROR" in message and "\n" not in message
    assert raw_listing() == []  # no temp file, no partial file


def test_unknown_checksums_still_require_an_idx_file(workdir, server, sleeps):
    with pytest.raises(
        PipelineError, match="junk/: not a valid IDX file: train-images-idx3-ubyte.gz: not an IDX"
    ):
        run(workdir, **custom([server.url("junk")]))


def test_server_error_is_retried_with_backoff(workdir, server, md5s, sleeps):
    result = run(workdir, **custom([server.url("flaky")], md5s, retries=2))
    assert all(server.hits["flaky", f] == 2 for f in FILES)
    assert sleeps == [fetch.BACKOFF_S] * 4
    assert {entry["source"] for entry in result["files"].values()} == {
        server.url("flaky") + f for f in FILES
    }


def test_retries_back_off_exponentially_then_give_up(workdir, server, md5s, sleeps):
    with pytest.raises(PipelineError, match=r"500/: HTTP 500 Internal Server Error \(3 tries\)"):
        run(workdir, **custom([server.url("500")], md5s, retries=2))
    assert server.hits["500", TRAIN_IMAGES] == 3
    assert sleeps == [fetch.BACKOFF_S, 2 * fetch.BACKOFF_S]


def test_not_found_is_not_retried(workdir, server, md5s, sleeps):
    with pytest.raises(PipelineError):
        run(workdir, **custom([server.url("404")], md5s, retries=2))
    assert server.hits["404", TRAIN_IMAGES] == 1 and sleeps == []


def test_verified_files_are_not_fetched_again(workdir, server, md5s):
    first = run(workdir, **custom([server.url("ok")], md5s))
    assert run(workdir, **custom([server.url("ok")], md5s)) == first
    assert all(server.hits["ok", f] == 1 for f in FILES)
    (RAW / TRAIN_IMAGES).write_bytes(b"damaged")
    assert run(workdir, **custom([server.url("ok")], md5s)) == first
    assert server.hits["ok", TRAIN_IMAGES] == 2 and server.hits["ok", FILES[1]] == 1


def test_custom_without_md5_records_observed_checksums(workdir, server, source, md5s):
    result = run(workdir, **custom([server.url("ok")]))
    assert {f: e["md5"] for f, e in result["files"].items()} == md5s
    assert {e["checked_against"] for e in result["files"].values()} == {
        "none (observed checksums recorded)"
    }
    run(workdir, **custom([server.url("ok")]))
    assert all(server.hits["ok", f] == 1 for f in FILES)  # kept: recorded checksums still match


def test_custom_without_md5_refetches_when_the_source_changes(workdir, server, tmp_path):
    run(workdir, **custom([server.url("ok")]))
    other = write_dataset(tmp_path / "other", n_train=30, n_test=10, seed=7)
    result = run(workdir, **custom([str(other)]))
    for fname in FILES:
        assert (RAW / fname).read_bytes() == (other / fname).read_bytes()
        assert result["files"][fname]["source"] == str(other / fname)


@pytest.mark.parametrize(
    "damage", [{"source": ["x"]}, {"md5": 5}, {"sha256": None}, {"source": {"a": 1}}]
)
def test_a_damaged_checksums_entry_counts_as_nothing(workdir, server, md5s, damage):
    """That file is fetched again and recorded afresh; the others are kept."""
    first = run(workdir, **custom([server.url("ok")]))
    recorded = json.loads((RAW / "checksums.json").read_text())
    recorded["files"][TRAIN_IMAGES] |= damage
    (RAW / "checksums.json").write_text(json.dumps(recorded))
    assert run(workdir, **custom([server.url("ok")])) == first
    assert server.hits["ok", TRAIN_IMAGES] == 2 and server.hits["ok", FILES[1]] == 1


def test_custom_md5_must_name_canonical_files(workdir, server, md5s):
    with pytest.raises(
        PipelineError, match=r"data.md5 names unknown file\(s\) train.gz \(allowed: train-images"
    ):
        run(workdir, **custom([server.url("ok")], {"train.gz": md5s[TRAIN_IMAGES]}))
    assert not server.hits and not RAW.exists()


@pytest.mark.parametrize(
    "env, mirrors, named",
    [
        ({}, ["/ok", "ftp://h/m/"], "data.mirrors[1]"),
        ({"MNIST_MIRROR": "s3://b/m"}, [], "MNIST_MIRROR"),
    ],
)
def test_unsupported_url_schemes_are_rejected_before_any_work(workdir, env, mirrors, named):
    expected = (
        rf"^{re.escape(named)} is '\w+://[^']+'; use a folder, a file:// URL or an http\(s\)://"
    )
    with pytest.raises(PipelineError, match=expected):
        run(workdir, env, **custom(mirrors))
    assert not RAW.exists()


@pytest.mark.parametrize(
    "env, mirrors, expected",
    [
        (
            {"MNIST_MIRROR": "http://u:p@localhost:99999/"},
            [],
            "MNIST_MIRROR is 'http://localhost:99999/', whose port is not a number from 1 to "
            "65535; correct it",
        ),
        (
            {"MNIST_MIRROR": "http://u:p@[::1"},
            [],
            "MNIST_MIRROR is not a valid URL: its host does not parse (an unclosed [ of an IPv6 "
            "address?); correct it",
        ),
        ({}, ["/ok", "http://[::1/m/"], "data.mirrors[1] is not a valid URL"),
        (
            {},
            ["http://127.0.0.1:8711/données/"],
            "data.mirrors[0] is 'http://127.0.0.1:8711/données/', whose path has the non-ASCII "
            "'é', which HTTP cannot send; percent-encode it (as %C3%A9)",
        ),
    ],
)
def test_unusable_urls_are_rejected_by_name_before_any_work(workdir, env, mirrors, expected):
    with pytest.raises(PipelineError) as caught:
        run(workdir, env, **custom(mirrors))
    assert str(caught.value).startswith(expected) and "u:p" not in str(caught.value)
    assert not RAW.exists()


def test_a_file_url_may_hold_any_character(workdir, tmp_path, source, md5s):
    """Unlike an HTTP path, a file:// path is opened, never sent."""
    folder = source.rename(tmp_path / "données")
    run(workdir, **custom([folder.as_uri().replace("%C3%A9", "é")], md5s))
    assert raw_listing() == COMPLETE


def test_redacting_credentials_keeps_host_and_port_as_written():
    assert fetch.redact("http://u:p@[::1]:8080/m/") == "http://[::1]:8080/m/"
    assert fetch.redact("https://u@Mirror.example/m/") == "https://Mirror.example/m/"


def test_custom_needs_a_source(workdir):
    with pytest.raises(PipelineError, match="set data.mirrors or MNIST_MIRROR"):
        run(workdir, **custom([]))


def test_file_url_and_folder_mirrors(workdir, source, md5s):
    result = run(workdir, **custom([source.as_uri()], md5s))
    assert result["files"][TRAIN_IMAGES]["source"] == f"{source.as_uri()}/{TRAIN_IMAGES}"
    (RAW / TRAIN_IMAGES).unlink()
    result = run(workdir, **custom([str(source)], md5s))
    assert result["files"][TRAIN_IMAGES]["source"] == str(source / TRAIN_IMAGES)
    assert raw_listing() == COMPLETE


def test_missing_files_in_folder_and_file_url(workdir, tmp_path, md5s):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    with pytest.raises(PipelineError) as caught:
        run(workdir, **custom([str(empty), empty.as_uri(), str(missing)], md5s))
    message = str(caught.value)
    assert f"{empty}: no file {TRAIN_IMAGES} there" in message
    assert f"{empty.as_uri()}: no such file" in message
    assert f"{missing}: no folder {missing}" in message


def test_mnist_mirror_env_is_tried_first(workdir, server, source, md5s):
    env = {"MNIST_MIRROR": server.url("ok")}
    result = run(workdir, env, **custom([str(source)], md5s))
    assert result["files"][TRAIN_IMAGES]["source"] == server.url("ok") + TRAIN_IMAGES
    (RAW / TRAIN_IMAGES).unlink()
    result = run(workdir, {"MNIST_MIRROR": server.url("404")}, **custom([str(source)], md5s))
    assert server.hits["404", TRAIN_IMAGES] == 1
    assert result["files"][TRAIN_IMAGES]["source"] == str(source / TRAIN_IMAGES)


def test_mnist_mirror_env_goes_first_and_duplicates_are_dropped():
    params = parse_params({"data": {"name": "kmnist"}})
    assert fetch.sources_for(params, {"MNIST_MIRROR": " /m "}) == [
        "/m",
        *DATASETS["kmnist"].mirrors,
    ]
    assert fetch.sources_for(params, {"MNIST_MIRROR": DATASETS["kmnist"].mirrors[0]}) == list(
        DATASETS["kmnist"].mirrors
    )


def test_unreachable_source_is_not_retried_for_later_files(workdir, server, md5s, sleeps):
    result = run(
        workdir,
        **custom([f"http://127.0.0.1:{free_port()}/mnist/", server.url("ok")], md5s, retries=2),
    )
    assert sleeps == [fetch.BACKOFF_S, 2 * fetch.BACKOFF_S]  # first file only
    assert raw_listing() == COMPLETE and result["dataset"] == "custom"


def test_credentials_in_url_become_basic_auth_and_are_not_recorded(workdir, server, md5s):
    # Only $MNIST_MIRROR may carry credentials: params.yaml refuses them (tests/test_faults.py).
    result = run(
        workdir, {"MNIST_MIRROR": server.url("auth", credentials=True)}, **custom([], md5s)
    )
    text = (RAW / "checksums.json").read_text()
    assert "s3cr3t" not in text and MIRROR_USER not in text  # neither raw nor percent-encoded
    assert result["files"][TRAIN_IMAGES]["source"] == server.url("auth") + TRAIN_IMAGES


def test_named_dataset_is_checked_against_official_checksums(workdir, server, sleeps):
    official = DATASETS["mnist"].md5[TRAIN_IMAGES]
    with pytest.raises(
        PipelineError, match=f"wrong bytes: MD5 [0-9a-f]{{32}} != expected {official}"
    ):
        run(workdir, name="mnist", mirrors=[server.url("ok")])
    assert raw_listing() == []


@pytest.mark.parametrize(
    "name, class_name",
    [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")],
)
def test_official_checksums_and_mirrors_are_torchvisions(name, class_name):
    import torchvision.datasets  # imported here: it takes seconds, and only this test needs it

    torchvision_class = getattr(torchvision.datasets, class_name)
    assert DATASETS[name].md5 == dict(torchvision_class.resources)
    assert list(DATASETS[name].mirrors) == list(torchvision_class.mirrors)


def test_stale_temp_files_are_removed(workdir, source, md5s):
    RAW.mkdir(parents=True)
    (RAW / f".{TRAIN_IMAGES}.abc123.tmp").write_bytes(b"left by a killed run")
    run(workdir, **custom([str(source)], md5s))
    assert raw_listing() == COMPLETE


def refuse(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize(
    "blocker, expected",
    [
        ("file", "data/raw is a file, not a folder; move it away"),
        ("read-only data", "data is not writable (Permission denied); fix its permissions"),
        ("read-only raw", "data/raw is not writable (Permission denied); fix its permissions"),
    ],
)
def test_a_data_raw_that_cannot_be_made_or_cleaned_is_one_clear_error(
    workdir, source, md5s, monkeypatch, blocker, expected
):
    """A file in the way, or no right to create data/raw or to delete a killed run's temp file
    there (refused by a patch: chmod does not stop root); what is there stays."""
    RAW.parent.mkdir()
    if blocker == "file":
        RAW.write_text("a file a user left here\n")
    elif blocker == "read-only data":
        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        RAW.mkdir()
        (RAW / f".{TRAIN_IMAGES}.abc123.tmp").write_bytes(b"left by a killed run")
        monkeypatch.setattr(Path, "unlink", refuse)
    before = {p: p.read_bytes() for p in RAW.parent.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError) as caught:
        run(workdir, **custom([str(source)], md5s))
    assert str(caught.value) == f"cannot write data/raw: {expected} and rerun the stage"
    assert {p: p.read_bytes() for p in RAW.parent.rglob("*") if p.is_file()} == before


class RecordingBar:
    def __init__(self, fail_after: int | None = None, **kwargs: object) -> None:
        self.kwargs, self.updates, self.fail_after = kwargs, [], fail_after

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        self.updates.append(n)
        if self.fail_after is not None and len(self.updates) > self.fail_after:
            raise KeyboardInterrupt


def test_progress_bar_counts_bytes(workdir, server, source, md5s, monkeypatch):
    bars: list[RecordingBar] = []
    monkeypatch.setattr(fetch, "bar", lambda **kw: bars.append(RecordingBar(**kw)) or bars[-1])
    run(workdir, **custom([server.url("ok")], md5s))
    assert [b.kwargs["desc"] for b in bars] == list(FILES)
    for b, fname in zip(bars, FILES, strict=True):
        size = (source / fname).stat().st_size
        assert b.kwargs["unit"] == "B" and b.kwargs["total"] == size and sum(b.updates) == size


def test_interrupt_mid_download_leaves_no_temp_file(workdir, server, md5s, monkeypatch):
    seen: list[list[str]] = []

    def interrupting_bar(**kwargs: object) -> RecordingBar:
        seen.append(raw_listing())
        return RecordingBar(fail_after=0, **kwargs)

    monkeypatch.setattr(fetch, "bar", interrupting_bar)
    with pytest.raises(KeyboardInterrupt):
        run(workdir, **custom([server.url("ok")], md5s))
    assert seen[0][0].startswith(f".{TRAIN_IMAGES}.") and seen[0][0].endswith(".tmp")
    assert raw_listing() == []


def test_sigterm_mid_download_leaves_no_temp_file(workdir, server):
    Path("params.yaml").write_text(
        f"data:\n  name: custom\n  mirrors: ['{server.url('stall')}']\n  timeout_s: 60\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MNIST_MIRROR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "download"], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not any(n.endswith(".tmp") for n in raw_listing()):
            assert proc.poll() is None and time.monotonic() < deadline, "download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert raw_listing() == []
