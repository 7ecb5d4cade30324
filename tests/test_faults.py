"""What a user sees when the world misbehaves: one clear `error:` line, and nothing already
written lost or left half-written.

Faults covered elsewhere, so not repeated here:
- a mirror that returns 404/500, a truncated body, wrong bytes, HTML junk, or stalls:
  tests/test_download.py::test_bad_mirror_alone_fails_naming_mirror_and_reason (and
  ::test_bad_mirror_is_skipped_for_the_next, ::test_sigterm_mid_download_leaves_no_temp_file);
- each kind of bad param value: tests/test_config.py::test_bad_values_name_key_value_and_allowed,
  and through the CLI tests/test_cli.py::test_bad_params_file_prints_one_error_line_and_exits_1;
- a NaN loss: tests/test_train.py::test_divergence_stops_with_one_clear_message and
  ::test_divergence_never_replaces_the_saved_state;
- a tracking server on a closed port:
  tests/test_train.py::test_unreachable_tracking_server_fails_before_training;
- wrong credentials against the real team stack (train and promote, basic-auth), and the
  stack's passwords in no log line, run record, artifact or workspace file:
  tests/test_team.py::test_basic_auth_ci_promotes_viewer_only_reads_and_bad_logins_do_nothing;
- corrupt pictures and IDX files, and a pickled --model, given to predict:
  tests/test_predict.py::test_bad_inputs_are_reported_one_by_one_and_the_rest_still_predicted and
  ::test_missing_or_pickled_model_is_a_clear_error;
- a deleted MLflow experiment:
  tests/test_train.py::test_a_deleted_experiment_fails_before_training_saying_how_to_restore_it;
- a deleted run and registry writes the server refuses, at promotion:
  tests/test_promote.py::test_a_deleted_run_is_refused_before_the_champion_moves,
  ::test_a_refused_tag_write_leaves_the_champion_where_it_was,
  ::test_a_refused_alias_move_is_one_line_and_releases_the_lock and
  tests/test_registry_lock.py::test_a_lock_another_user_left_is_broken_at_once_or_named_if_that_is_refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import paths
from pipeline.__main__ import main as cli_main
from pipeline.config import parse_params
from pipeline.data import fetch
from pipeline.data.datasets import FILES, DatasetSpec
from pipeline.errors import PipelineError
from pipeline.learner.model import MLP, Architecture, load_checkpoint, save_checkpoint
from pipeline.registry import tracking
from pipeline.stages import train
from tests.helpers import (
    MIRROR_USER,
    TINY_PIPELINE,
    MirrorServer,
    files_holding,
    free_port,
    read_history,
)

ROOT = Path(__file__).resolve().parents[1]


def tree_bytes(*roots: Path) -> dict[str, bytes]:
    """Every file under the given folders (or the files themselves), by path: to prove nothing
    changed."""
    out = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            out[str(path)] = path.read_bytes()
    return out


# --- no network -------------------------------------------------------------------------------


def test_no_network_fails_in_seconds_naming_every_source(workdir: Path, tmp_path: Path) -> None:
    """Every kind of unusable source at once, through the CLI: one `error:` line names each with its
    reason and says how to fix it; nothing is left in data/raw."""
    refused = f"http://127.0.0.1:{free_port()}/mnist/"
    unresolvable = "http://mnist-mirror.invalid/mnist/"  # .invalid never resolves (RFC 2606)
    nothing = tmp_path / "nothing"
    mirrors = [refused, unresolvable, "file://elsewhere/mnist/", "http:///mnist/", str(nothing)]
    Path("params.yaml").write_text(yaml.safe_dump({"data": {"name": "custom", "mirrors": mirrors}}))
    env = {**os.environ, "MNIST_MIRROR": str(tmp_path / "gone")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "download"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: could not fetch train-images-idx3-ubyte.gz from any source (")
    assert f"{tmp_path / 'gone'}: no folder" in line  # MNIST_MIRROR, tried first
    assert (
        f"{refused}: connection refused (3 tries)" in line
    )  # retried with backoff: it may come back
    assert f"{unresolvable}: host not found" in line
    assert "file://elsewhere/mnist/: no such file" in line
    assert "http:///mnist/: unusable URL (no host given)" in line
    assert f"{nothing}: no folder" in line
    assert "Set MNIST_MIRROR to a folder or URL" in line
    assert os.listdir(paths.RAW_DIR) == []
    assert elapsed < 15, f"an offline machine should fail in seconds, took {elapsed:.1f} s"


# --- outputs that cannot be written ------------------------------------------------------------


@pytest.mark.parametrize("blocker", ["file where reports/ should be", "read-only reports/"])
def test_unwritable_reports_fails_with_one_line_and_keeps_everything(
    trained_workdir: Path, blocker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    Path("params.yaml").write_text("{}\n")
    reports = paths.REPORTS_DIR
    if blocker.startswith("read-only"):
        if os.geteuid() == 0:
            pytest.skip(
                "running as root, which writes through chmod 0o555; "
                "the file-in-the-way case covers this error path"
            )
        assert cli_main(["evaluate"]) == 0  # existing outputs that a failed rerun must leave alone
        reports.chmod(0o555)
        expected = (
            f"error: cannot write {paths.METRICS_FILE}: reports is not writable (Permission denied)"
        )
    else:
        reports.rename("reports.moved")
        reports.write_text("a file a user left here\n")
        expected = (
            f"error: cannot write {paths.METRICS_FILE}: reports is a file, not a folder; "
            "move it away"
        )
    run_id = json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"]
    before_metrics = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).data.metrics
    before = tree_bytes(reports, paths.MODELS_DIR)
    capsys.readouterr()
    try:
        code = cli_main(["evaluate"])
    finally:
        if reports.is_dir():
            reports.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert tree_bytes(reports, paths.MODELS_DIR) == before
    if reports.is_dir():
        assert not [p for p in reports.iterdir() if p.name.endswith(".tmp")]
    after_metrics = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).data.metrics
    assert after_metrics == before_metrics  # nothing logged either


# --- the tracking server -----------------------------------------------------------------------


@pytest.mark.slow
def test_tracking_server_that_never_answers_fails_within_15_s(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts connections and then says nothing (a hung proxy, a stopped VM).

    Timed in-process: a fresh `python -m pipeline train` adds its imports (seconds, more on a
    loaded machine) before it ever contacts the server."""
    import mlflow  # noqa: F401 - imported before the clock starts, as in any running stage

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        Path("params.yaml").write_text("{}\n")
        started = time.monotonic()
        code = cli_main(["train"])
        elapsed = time.monotonic() - started
    assert code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: MLflow tracking server {uri} is unreachable (timed out)")
    assert "unset MLFLOW_TRACKING_URI" in line
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert not paths.MODELS_DIR.exists() and not paths.REPORTS_DIR.exists()


@contextlib.contextmanager
def login_server(password: str | None) -> Iterator[str]:
    """A stand-in MLflow server: /health answers anyone (as MLflow's does), the API only the
    user `ci` with `password` (everyone when None: a server without authentication). Yields its
    URL."""
    token = "Basic " + base64.b64encode(f"ci:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            anyone = self.path == "/health" or password is None
            self.send_response(200 if anyone or self.headers.get("Authorization") == token else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    "user, refused", [(None, "refused anonymous access"), ("ci", "refused user 'ci'")]
)
def test_refused_credentials_stop_train_before_any_work(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    user: str | None,
    refused: str,
) -> None:
    """/health answers without credentials, so only a call that needs them can tell; train
    checks before it reads the data (there is none here) or writes anything."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    if user:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-pa55")
    Path("params.yaml").write_text("{}\n")
    with login_server("right-pa55") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert cli_main(["train"]) == 1
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line == (
        f"error: MLflow tracking server {uri} {refused} (HTTP 401: wrong or missing password); "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server "
        '(the local stack: eval "$(scripts/stack.sh env)") and rerun'
    )
    assert "wrong-pa55" not in err and os.listdir(".") == ["params.yaml"]


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("http://127.0.0.1:5000x", "nonnumeric port: '5000x'"),
        ("http://exa mple.com", "URL can't contain control characters"),
        ("http://[::1", "Invalid IPv6 URL"),
    ],
)
def test_a_malformed_tracking_uri_is_one_line_naming_the_variable(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    uri: str,
    reason: str,
) -> None:
    Path("params.yaml").write_text("{}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli_main(["promote", "--run", "abc"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI {uri!r} is not a valid URL ({reason}")
    assert line.endswith(
        "; fix it (e.g. http://127.0.0.1:5000) or unset it to use the local sqlite:///mlflow.db"
    )
    assert os.listdir(".") == ["params.yaml"]


@pytest.mark.parametrize("password", [None, "right-pa55"], ids=["no auth", "right password"])
def test_accepted_credentials_or_a_server_without_auth_pass_the_check(
    monkeypatch: pytest.MonkeyPatch, password: str | None
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right-pa55")
    with login_server(password) as uri:
        tracking.check_credentials(uri)


# --- pickled payloads --------------------------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: what a booby-trapped checkpoint would do with a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_checkpoint_is_refused_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    model = MLP(Architecture(28, (8,)), 0.1, 0.3)
    evil = tmp_path / "model.pt"
    save_checkpoint(evil, model, {"loss": "cross_entropy", "epoch": 1, "hook": Payload(marker)})

    with pytest.raises(PipelineError) as caught:
        load_checkpoint(evil)
    message = str(caught.value)
    assert message.startswith(
        f"{evil} holds pickled Python objects that weights_only loading refuses ("
    )
    assert "\n" not in message and not marker.exists()

    # A booby-trapped models/last.pt is not resumed from either; training starts fresh.
    assert train.load_resume_state(evil, expected="anything") is None
    assert "is unreadable (UnpicklingError); starting fresh" in capsys.readouterr().err
    assert not marker.exists()

    torch.load(evil, weights_only=False)  # proof the file is armed: unsafe loading runs it
    assert marker.exists()


def test_pipeline_never_unpickles_what_it_reads() -> None:
    """User-supplied files are read with weights_only=True / allow_pickle=False / safe YAML only."""
    problems = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        text = path.read_text()
        for pattern in (
            r"weights_only\s*=\s*False",
            r"allow_pickle\s*=\s*True",
            r"\bpickle\.loads?\(",
            r"yaml\.(unsafe_load|full_load)\(",
            r"Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)",
        ):
            problems += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if not re.search(r"weights_only\s*=\s*True", call.group(0)):
                problems.append(f"{path.name}: {call.group(0)}")
    assert problems == []
    loads = sum(
        len(re.findall(r"torch\.load\(", p.read_text())) for p in (ROOT / "pipeline").rglob("*.py")
    )
    assert loads >= 2  # model.load_checkpoint and train's resume state: the scan does see them


# --- secrets -----------------------------------------------------------------------------------


def test_params_refuse_mirror_urls_with_credentials() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_params(
            {"data": {"mirrors": ["/data/mnist", "https://alice:s3cr3t@mirror.example/mnist/"]}}
        )
    message = str(caught.value)
    assert message.startswith("invalid params: data.mirrors entry 1 carries credentials")
    assert "MNIST_MIRROR" in message and "s3cr3t" not in message and "alice" not in message


def test_documented_mlflow_servers_bind_to_localhost() -> None:
    """A tracking server has no authentication: the README and docs never tell anyone to expose
    one."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = [
        (page.name, line.strip())
        for page in pages
        for line in page.read_text().replace("\\\n", " ").splitlines()
        if re.match(r"\s*(mlflow (server|ui)\b)", line)
    ]
    assert commands, "the README and docs document no mlflow server/ui command"
    for page, command in commands:
        assert re.search(r"--host 127\.0\.0\.1\b", command), f"{page}: {command}"


def test_a_file_matching_md5_but_not_sha256_is_refused(
    workdir: Path, synthetic_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5 = {f: hashlib.md5((synthetic_mirror / f).read_bytes()).hexdigest() for f in FILES}
    forged = {f: "0" * 64 for f in FILES}  # as if someone forged an MD5 collision
    monkeypatch.setitem(
        fetch.DATASETS,
        "mnist",
        DatasetSpec((str(synthetic_mirror),), md5, train_rows=600, test_rows=200, sha256=forged),
    )
    with pytest.raises(PipelineError, match=r"wrong bytes: SHA-256 [0-9a-f]{64} != expected 0{64}"):
        fetch.download(parse_params({}), paths.RAW_DIR, {})
    assert os.listdir(paths.RAW_DIR) == []


@pytest.mark.slow
def test_mirror_password_reaches_no_log_file_or_mlflow_record(
    run_stages,
    synthetic_mirror: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import mlflow

    with MirrorServer.of(synthetic_mirror) as mirror:
        monkeypatch.setenv("MNIST_MIRROR", mirror.url("auth", credentials=True))
        run_stages("download", "stats", "split", "train", "evaluate")
    logs = "".join(capfd.readouterr())
    assert "127.0.0.1" in logs  # the download lines do name the source...
    assert "s3cr3t" not in logs and MIRROR_USER not in logs  # ...without the credentials
    run = mlflow.MlflowClient(tracking.tracking_uri()).get_run(
        json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"]
    )
    recorded = json.dumps([run.data.params, run.data.tags])
    assert "dataset.md5.train-images-idx3-ubyte.gz" in recorded and "s3cr3t" not in recorded
    # The dataset records (the run list's Dataset column) name the mirror, also without them.
    sources = sorted(json.loads(i.dataset.source)["url"] for i in run.inputs.dataset_inputs)
    files = (
        "t10k-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte.gz",
    )
    assert sources == [mirror.url("auth") + name for name in files]
    # data/raw/checksums.json, models/, reports/, mlflow.db and its artifacts
    assert files_holding(Path.cwd(), "s3cr3t") == []


# --- signals during training -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, exit_code",
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["SIGTERM", "SIGKILL"],
)
def test_signal_mid_training_stops_it_and_the_rerun_resumes_to_the_same_result(
    run_stages, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals, exit_code: int
) -> None:
    """SIGTERM (CI cancel, `docker stop`) exits promptly through the handler, removing temp files;
    SIGKILL (or power loss) gives no chance to clean up. Either way the rerun resumes from last.pt
    and ends where an uninterrupted run ends."""
    run_stages("download", "stats", "split")
    monkeypatch.delenv("MNIST_MIRROR")
    epochs = 10  # ample room: the signal lands well before the last epoch
    params = {
        **TINY_PIPELINE,
        "model": {"hidden": [512, 512]},
        "train": {"epochs": epochs, "threads": 1},
    }
    Path("params.yaml").write_text(
        yaml.safe_dump(params)
    )  # 512-wide layers: an epoch takes a moment
    command = [sys.executable, "-m", "pipeline", "train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith(f"epoch 1/{epochs}:"):  # printed once epoch 1's state is saved
                proc.send_signal(signum)
                signalled = time.monotonic()
                break
        else:
            pytest.fail("training ended before epoch 1 was logged")
        rest = proc.stderr.read()
        code = proc.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
        proc.wait()
    assert code == exit_code, rest
    assert took < 10, f"{signum.name} took {took:.1f} s to stop training"
    assert "Traceback" not in rest
    if signum == signal.SIGTERM:  # the handler's cleanup; SIGKILL allows none
        leftovers = [
            p
            for d in (paths.MODELS_DIR, paths.REPORTS_DIR)
            for p in d.iterdir()
            if p.suffix == ".tmp"
        ]
        assert leftovers == []
    saved = torch.load(paths.LAST_CHECKPOINT_FILE, weights_only=True)
    assert 1 <= saved["epoch"] < epochs and not saved["completed"], (
        "the signal should land mid-training"
    )
    assert not paths.MODEL_FILE.exists()
    assert len(read_history(paths.TRAIN_HISTORY_FILE)) == saved["epoch"]

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from models/last.pt after epoch {saved['epoch']}\n" in resumed.stderr
    history = read_history(paths.TRAIN_HISTORY_FILE)
    weights = load_checkpoint(paths.MODEL_FILE)["state_dict"]

    fresh = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300
    )  # last.pt completed
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr, fresh.stderr
    assert read_history(paths.TRAIN_HISTORY_FILE) == history
    for key, value in load_checkpoint(paths.MODEL_FILE)["state_dict"].items():
        assert torch.equal(weights[key], value), key


# --- two pipelines at once ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_dvc_repro_at_once_one_waits_out_the_lock_and_fails_cleanly(dvc_project: Path) -> None:
    import mlflow

    runs = [
        subprocess.Popen(
            ["dvc", "repro"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=900)[0] for proc in runs]
    codes = [proc.returncode for proc in runs]
    assert sorted(codes) == [0, 255], outputs
    winner, loser = (outputs[0], outputs[1]) if codes[0] == 0 else (outputs[1], outputs[0])
    lock_lines = [line for line in loser.splitlines() if line.startswith("ERROR:")]
    assert lock_lines and re.search(
        r"Unable to acquire lock|is busy, it is being blocked by", lock_lines[0]
    ), loser
    assert "Running stage 'train'" in winner and "Running stage 'train'" not in loser

    lock = yaml.safe_load(Path("dvc.lock").read_text())
    assert list(lock["stages"]) == [
        "download",
        "stats",
        "split",
        "validate",
        "train",
        "evaluate",
        "report",
        "promote",
    ]
    status = subprocess.run(["dvc", "status"], capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert "Data and pipelines are up to date" in status.stdout, status.stdout

    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-mlp")
    found = client.search_runs([experiment.experiment_id])
    assert [(r.info.status, r.info.run_id) for r in found] == [
        ("FINISHED", json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"])
    ]
    assert len(client.search_model_versions("name='mnist-mlp'")) == 1
