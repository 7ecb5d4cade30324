"""The team setup for real: scripts/stack.sh (PostgreSQL, S3 on moto, mlflow server), two clones
sharing it and a DVC S3 remote, concurrent promotion, and object storage going away mid-upload.

Each pytest worker starts one stack for its session. The MLflow server reaches S3 through a TCP
proxy in this process (STACK_MLFLOW_S3_ENDPOINT), so a test can cut object storage off without
killing moto, which keeps its objects only in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.registry import registry_lock
from tests.helpers import (
    TINY_PIPELINE,
    answer_table,
    background_server,
    files_holding,
    free_port,
    log_promotion_evidence,
    serve_command,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "scripts" / "stack.sh"
UNREACHABLE_MIRROR = "http://127.0.0.1:9/mnist/"  # nothing listens on the discard port
REPETITIONS = 20


class TcpProxy:
    """Forwards 127.0.0.1:port to `target`; off() closes the port and cuts open connections,
    on() reopens it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target: tuple[str, int] | None = None
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def off(self) -> None:
        server, self._server = self._server, None
        with self._lock:
            doomed = [server, *self._open] if server else list(self._open)
            self._open.clear()
        for sock in doomed:  # shutdown wakes the threads blocked in accept() and recv()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except (OSError, TypeError):
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def tool_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **extra,
    }


@pytest.fixture(scope="session")
def s3_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    proxy.on()
    yield proxy
    proxy.off()


def stack_env(env: dict[str, str], user: str) -> dict[str, str]:
    """`scripts/stack.sh env USER` as a dict."""
    exports = subprocess.run(
        [str(STACK), "env", user], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    # `export NAME=VALUE`, VALUE quoted for the shell (printf %q): read as eval reads it.
    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in exports.stdout.splitlines()
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_proxy: TcpProxy) -> Iterator[dict[str, str]]:
    """`scripts/stack.sh start` in a folder of its own, its `env` (user ci) as a dict, plus
    STACK_DIR and the passwords of viewer and admin (VIEWER_PASSWORD, ADMIN_PASSWORD); stopped at
    the end, checking that stop ends every process start recorded."""
    state = tmp_path_factory.mktemp("stack")
    env = tool_env(STACK_DIR=str(state), STACK_MLFLOW_S3_ENDPOINT=s3_proxy.url)
    started = subprocess.run(
        [str(STACK), "start"], check=False, env=env, capture_output=True, text=True, timeout=600
    )
    try:
        assert started.returncode == 0, started.stderr + "".join(
            f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in state.glob("*.log")
        )
        values = stack_env(env, "ci")
        assert values["MLFLOW_TRACKING_USERNAME"] == "ci"
        for user in ("viewer", "admin"):
            values[f"{user.upper()}_PASSWORD"] = stack_env(env, user)["MLFLOW_TRACKING_PASSWORD"]
        values["STACK_DIR"] = str(state)
        s3 = urllib.parse.urlsplit(values["STACK_S3_ENDPOINT"])
        s3_proxy.target = (s3.hostname, s3.port)
        yield values
    finally:
        pids = {p.stem: int(p.read_text()) for p in state.glob("*.pid")}
        stopped = subprocess.run(
            [str(STACK), "stop"], check=False, env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        still = {
            name: pid
            for name, pid in pids.items()
            if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        }
        assert not still, f"scripts/stack.sh stop left {still} running"
        # The database lives outside the pytest folder when the postgres user cannot reach it.
        root = state / "postgres.root"
        if root.is_file() and not Path(root.read_text().strip()).is_relative_to(state):
            shutil.rmtree(root.read_text().strip(), ignore_errors=True)


def use_stack(monkeypatch: pytest.MonkeyPatch, stack: dict[str, str]) -> str:
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.setenv(key, stack[key])
    # In-process callers (promote's get_model_info) use MLflow's process-wide URI, which an
    # earlier test in this worker may have set with mlflow.set_tracking_uri; a stage process
    # sets it from the environment (tracking.configure), so do the same here.
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    return stack["MLFLOW_TRACKING_URI"]


def call(
    url: str,
    endpoint: str,
    login: tuple[str, str] | None,
    body: dict | None = None,
    method: str | None = None,
    api: str = "2.0",
    **query: str,
) -> tuple[int, dict]:
    """One REST request to the MLflow server as `login` (user, password), anonymous when None: a
    GET with `query`, else `method` (default POST) with `body`. Returns the status and the JSON
    answer."""
    request = urllib.request.Request(
        f"{url}/api/{api}/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    if login:
        token = base64.b64encode(":".join(login).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def rest(url: str, endpoint: str, **query: str) -> dict:
    """A GET as the user use_stack put in the environment (ci)."""
    login = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    status, answer = call(url, endpoint, login, **query)
    assert status == 200, (endpoint, query, status)
    return answer


def bucket_keys(stack: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack["STACK_S3_ENDPOINT"], region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def sh(*command: str, cwd: Path, timeout: int = 300) -> str:
    result = subprocess.run(
        command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} in {cwd}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout + result.stderr


@pytest.mark.slow
def test_two_machines_share_the_registry_and_the_dvc_remote(
    dvc_project: Path, stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrains, promotes v1 and pushes; B, offline, pulls A's commit and data and retrains;
    a fresh clone C is complete: dvc pull then dvc repro reruns nothing."""
    url = use_stack(monkeypatch, stack)
    model = f"team-{uuid.uuid4().hex[:8]}"
    a = dvc_project
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["data"]["mirrors"] = [UNREACHABLE_MIRROR]
    params["mlflow"] = {"experiment": model, "registered_model": model}
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The docs' commands, with the stack's endpoint (docs/team.md, "Two machines").
    remote = f"{stack['STACK_DVC_REMOTE']}/{model}"
    sh("dvc", "remote", "add", "-d", "storage", remote, cwd=a)
    sh("dvc", "remote", "modify", "storage", "endpointurl", stack["STACK_S3_ENDPOINT"], cwd=a)
    sh("git", "add", "-A", cwd=a)
    sh("git", "commit", "-q", "-m", "team remote", cwd=a)

    out_a = sh("scripts/retrain.sh", cwd=a, timeout=1200)
    assert "Running stage 'download'" in out_a and "== dvc push" in out_a
    sh("git", "add", "-A", cwd=a)
    sh("git", "commit", "-q", "-m", "retrain on A", cwd=a)
    first = json.loads((a / "reports/promotion.json").read_text())
    assert (first["decision"], first["version"]) == ("promoted", 1)

    # C: a fresh clone of A's commit has everything dvc.lock names once it pulls.
    c = tmp_path / "c"
    sh("git", "clone", "-q", str(a), str(c), cwd=tmp_path)
    sh("dvc", "pull", cwd=c)
    lock = yaml.safe_load((c / "dvc.lock").read_text())
    outs = {o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    assert "models/mlflow_run.json" in outs and all((c / path).exists() for path in outs)
    repro = sh("dvc", "repro", cwd=c)
    assert "Running stage" not in repro, repro
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=c)

    # B: no mirror, the configured one unreachable; the data must come from the DVC remote.
    monkeypatch.delenv("MNIST_MIRROR")
    b = tmp_path / "b"
    sh("git", "clone", "-q", str(a), str(b), cwd=tmp_path)
    out_b = sh("scripts/retrain.sh", cwd=b, timeout=1200)
    assert "== dvc pull" in out_b and "upstream: no source answered" in out_b
    assert "Running stage 'download'" not in out_b and "Running stage 'train'" in out_b, out_b
    second = json.loads((b / "reports/promotion.json").read_text())
    assert (second["decision"], second["version"], second["champion_version"]) == ("kept", 2, 1)
    assert second["data_changed_since_champion"] == []

    # The registry, through the server's REST API.
    registered = rest(url, "registered-models/get", name=model)["registered_model"]
    assert registered["aliases"] == [{"alias": "champion", "version": "1"}]
    versions = rest(url, "model-versions/search", filter=f"name='{model}'")["model_versions"]
    assert {(v["version"], v["run_id"]) for v in versions} == {
        ("1", first["run_id"]),
        ("2", second["run_id"]),
    }
    for clone, record in ((a, first), (b, second)):
        run = rest(url, "runs/get", run_id=record["run_id"])["run"]
        logged = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert (logged["train.epochs"], logged["model.hidden"], logged["data.name"]) == (
            "2",
            "[32]",
            "custom",
        )
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        local = json.loads((clone / "reports/metrics.json").read_text())
        assert metrics["test_accuracy"] == pytest.approx(local["test_accuracy"])
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert (tags["promotion.decision"], tags["promotion.reason"]) == (
            record["decision"],
            record["reason"],
        )
        # The model's files are in S3, not on either machine.
        model_id = run["outputs"]["model_outputs"][0]["model_id"]
        assert any(
            model_id in key and key.endswith("graph.pt2") for key in bucket_keys(stack, "mlflow")
        )
    assert not list(a.glob("mlruns")) and not list(b.glob("mlruns"))

    # The champion served from the team stack (its files come from S3 through the server) gives
    # A's labelled answers: a picture and a pixel row, and 0-255 pixels refused.
    port = free_port()
    with background_server(
        serve_command(f"models:/{model}@champion", port),
        f"http://127.0.0.1:{port}/ping",
        tmp_path / "serve.log",
        env={
            **os.environ,
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
            # records to the stack's S3, where a job on another machine reads them
            "MNIST_RECORDS": f"s3://mlflow/records-{model}",
            "AWS_ENDPOINT_URL": stack["STACK_S3_ENDPOINT"],
        },
    ):
        digit = (np.arange(784, dtype=np.float32).reshape(28, 28) % 7 == 0) * 255
        picture = io.BytesIO()
        Image.fromarray(digit.astype(np.uint8)).save(picture, "PNG")
        rows = [base64.b64encode(picture.getvalue()).decode(), (digit.ravel() / 255).tolist()]
        status, answer = post_json(f"http://127.0.0.1:{port}/invocations", {"inputs": rows})
        assert status == 200, answer
        labelled = {"digit", "probability", "probabilities", "ood"}
        assert [labelled <= set(a) for a in answer["predictions"]] == [True, True]
        status, answer = post_json(
            f"http://127.0.0.1:{port}/invocations", {"inputs": [digit.ravel().tolist()]}
        )
        assert status == 400 and answer["message"].endswith("divide 0-255 values by 255")
        status, _ = post_json(  # a window of one picture asked 120 times: drift
            f"http://127.0.0.1:{port}/invocations", {"inputs": [rows[1]] * 120}
        )
        assert status == 200
    recorded = bucket_keys(stack, "mlflow", f"records-{model}/")
    assert len(recorded) == 2 and all(".parquet" in key and "/date=" in key for key in recorded)

    # The monitor on another machine: records from S3, the reference through the server.
    judged = subprocess.run(
        [sys.executable, "-m", "pipeline", "monitor"],
        cwd=c,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "MNIST_RECORDS": f"s3://mlflow/records-{model}",
            "AWS_ENDPOINT_URL": stack["STACK_S3_ENDPOINT"],
        },
    )
    assert judged.returncode == 3, judged.stdout + judged.stderr
    report = json.loads((c / "reports/monitoring.json").read_text())
    served = rest(url, "runs/get", run_id=first["run_id"])["run"]["outputs"]["model_outputs"]
    assert [(m["model"], m["records"], m["judged"]) for m in report["models"]] == [
        (served[0]["model_id"], 122, True)
    ]

    # The DVC remote holds what A's dvc.lock names (the model's content address among them).
    model_md5 = next(
        o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt"
    )
    keys = bucket_keys(stack, "dvc", f"{model}/")
    assert f"{model}/files/md5/{model_md5[:2]}/{model_md5[2:]}" in keys


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def finished_run(client, experiment_id: str, model: str, accuracy: float) -> str:
    """What train and evaluate leave in the registry: a run with what promote compares (test
    metrics, signature, per-image answers) and its version."""
    run = client.create_run(experiment_id)
    log_promotion_evidence(client, run.info.run_id, accuracy)
    client.set_terminated(run.info.run_id)
    client.create_model_version(
        model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    return run.info.run_id


def promote_run(client, model: str, run_id: str, accuracy: float) -> dict:
    """promote's decision for a run whose only difference from the champion is its accuracy."""
    from pipeline.quality import gate
    from pipeline.registry import mainline
    from pipeline.stages import promote

    metrics = {"test_accuracy": accuracy, "test_ece": 0.003}
    line = mainline.Line(True, "both promoters retrain the main line")
    return promote.promote(client, model, run_id, metrics, answer_table(), gate.Settings(), line)


@pytest.mark.slow
def test_concurrent_promotions_always_end_on_the_better_version(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two promoters (separate clients, released together by a barrier) against the same champion,
    REPETITIONS times; without the registry lock the worse one wins about half the time."""
    from mlflow import MlflowClient

    url = use_stack(monkeypatch, stack)
    client = MlflowClient(url)
    tag = uuid.uuid4().hex[:8]
    experiment = client.create_experiment(f"race-{tag}")
    orders = {"worse first": 0, "better first": 0}
    for rep in range(REPETITIONS):
        model = f"race-{tag}-{rep}"
        client.create_registered_model(model)
        base = finished_run(client, experiment, model, 0.5)
        promote_run(client, model, base, 0.5)
        worse, better = (
            finished_run(client, experiment, model, 0.7),
            finished_run(client, experiment, model, 0.9),
        )
        barrier = threading.Barrier(2)

        def contend(
            run_id: str, accuracy: float, model: str = model, barrier: threading.Barrier = barrier
        ) -> dict:
            own = MlflowClient(url)
            barrier.wait()
            return promote_run(own, model, run_id, accuracy)

        with ThreadPoolExecutor(2) as pool:
            w, b = [
                f.result()
                for f in [pool.submit(contend, worse, 0.7), pool.submit(contend, better, 0.9)]
            ]
        assert client.get_registered_model(model).aliases == {"champion": "3"}, (rep, w, b)
        # The two decisions are those of some serial order.
        if w["decision"] == "promoted":
            orders["worse first"] += 1
            assert w["previous_champion_version"] == 1, (rep, w, b)
            assert (b["decision"], b["previous_champion_version"]) == ("promoted", 2), (rep, w, b)
        else:
            orders["better first"] += 1
            assert (b["decision"], b["previous_champion_version"]) == ("promoted", 1), (rep, w, b)
            assert w["previous_champion_version"] == 3 and "vs champion version 3" in w["reason"], (
                rep,
                w,
                b,
            )
        for run_id, record in ((worse, w), (better, b)):
            tags = client.get_run(run_id).data.tags
            assert (tags["promotion.decision"], tags["promotion.reason"]) == (
                record["decision"],
                record["reason"],
            )
        assert not client.search_registered_models(f"name = '{registry_lock.lock_name(model)}'")
    print(f"serial orders over {REPETITIONS} races: {orders}")


@pytest.mark.slow
def test_object_storage_outage_during_log_model_registers_nothing_and_a_rerun_succeeds(
    stack: dict[str, str],
    s3_proxy: TcpProxy,
    mlflow_workdir: Path,
    synthetic_mirror: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from mlflow import MlflowClient

    from pipeline import __main__ as cli
    from pipeline.learner.model import load_checkpoint
    from pipeline.paths import METRICS_FILE, MLFLOW_RUN_FILE, MODEL_FILE, PROMOTION_FILE

    url = use_stack(monkeypatch, stack)
    monkeypatch.setenv("MNIST_MIRROR", str(synthetic_mirror))
    model = f"outage-{uuid.uuid4().hex[:8]}"
    Path("params.yaml").write_text(
        yaml.safe_dump(
            {**TINY_PIPELINE, "mlflow": {"experiment": model, "registered_model": model}}
        )
    )
    for stage in ("download", "stats", "split", "validate", "train", "evaluate", "promote"):
        assert cli.main([stage]) == 0, stage
    client = MlflowClient(url)
    first_run = json.loads(MLFLOW_RUN_FILE.read_text())
    metrics_before = METRICS_FILE.read_bytes()
    capsys.readouterr()

    s3_proxy.off()
    try:
        assert cli.main(["train"]) == 1
        err = capsys.readouterr().err.strip()
    finally:
        s3_proxy.on()
    errors = [
        line for line in err.splitlines() if line.startswith("error:")
    ]  # the rest: the stage's progress
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: could not store the model in MLflow's artifact store"), err
    assert errors[0].endswith(
        "no model version was registered. Check that the tracking server reaches its "
        "object storage, then rerun: dvc repro train"
    ), err
    # Local outputs intact: a loadable model, the last run's reference and metrics unchanged.
    load_checkpoint(MODEL_FILE)  # raises on a missing or half-written file
    assert (
        json.loads(MLFLOW_RUN_FILE.read_text()) == first_run
        and METRICS_FILE.read_bytes() == metrics_before
    )
    assert not list(Path(".").rglob(".*.tmp"))
    # No version from the failed upload: nothing but version 1 could ever become champion.
    versions = client.search_model_versions(f"name='{model}'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_registered_model(model).aliases == {"champion": "1"}

    # S3 is back: the same command succeeds and the new version is promoted or kept as usual.
    for stage in ("train", "evaluate", "promote"):
        assert cli.main([stage]) == 0, stage
    record = json.loads(PROMOTION_FILE.read_text())
    assert record["version"] == 2 and record["run_id"] != first_run["run_id"]
    assert {v.version for v in client.search_model_versions(f"name='{model}'")} == {"1", "2"}
    # The version's own model: the run also lists the failed attempt's, in no fixed order (the
    # rows share MLflow's inputs table with the run's dataset inputs).
    model_id = client.get_model_version(model, "2").source.removeprefix("models:/")
    assert model_id in [o.model_id for o in client.get_run(record["run_id"]).outputs.model_outputs]
    assert any(
        model_id in key and key.endswith("graph.pt2") for key in bucket_keys(stack, "mlflow")
    )


@pytest.mark.slow
def test_a_champion_is_restored_from_the_git_branch_its_run_names(
    dvc_project: Path, stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduled retrains (RETRAIN_GIT_REMOTE=origin) on a clean main: on 200 training images v1
    becomes champion; on 900 (the mirror changed) v2 replaces it and its branch is pushed. A fresh
    clone checks out the branch named on the champion's run, pulls, and dvc repro reruns nothing;
    its models/model.pt is the file the champion's run trained, by SHA-256."""
    from mlflow import MlflowClient

    from pipeline.registry import gitref, lineage

    client = MlflowClient(use_stack(monkeypatch, stack))
    model = f"gitref-{uuid.uuid4().hex[:8]}"
    mirror = write_dataset(tmp_path / "gitref-mirror", n_train=200)
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    monkeypatch.setenv("RETRAIN_GIT_REMOTE", "origin")
    a, origin = dvc_project, tmp_path / "origin.git"
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["mlflow"] = {"experiment": model, "registered_model": model}
    # Models this tiny trade digits between trainings (digit 7 goes from 85% to 0% here): the
    # per-digit gate, tested on its own elsewhere, is off, so that the more accurate model wins.
    params["promote"].update(class_drop_p=1e-12, max_class_drop=100.0)
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "remote", "add", "-d", "storage", f"{stack['STACK_DVC_REMOTE']}/{model}", cwd=a)
    sh("dvc", "remote", "modify", "storage", "endpointurl", stack["STACK_S3_ENDPOINT"], cwd=a)
    sh("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    sh("git", "remote", "add", "origin", str(origin), cwd=a)
    sh("git", "add", "-A", cwd=a)
    sh("git", "commit", "-q", "-m", "team remote", cwd=a)
    sh("git", "push", "-q", "origin", "main", cwd=a)

    def retrain() -> tuple[dict, dict[str, str]]:
        output = sh("scripts/retrain.sh", cwd=a, timeout=1200)
        assert output.index("== dvc push") < output.index("== git branch"), output
        record = json.loads((a / "reports/promotion.json").read_text())
        return record, client.get_run(record["run_id"]).data.tags

    first, first_tags = retrain()
    assert (first["decision"], first["version"]) == ("promoted", 1), first
    # The branch's commit is the working tree as trained, new files included; main takes it, as a
    # merged pull request would, so the next retrain starts from a clean main again.
    sh("git", "reset", "-q", first_tags[gitref.REF_TAG], cwd=a)
    assert sh("git", "status", "--porcelain", cwd=a) == ""

    write_dataset(mirror, n_train=900)  # same test set, more training images
    second, tags = retrain()
    assert (second["decision"], second["version"]) == ("promoted", 2), second
    assert tags[gitref.REF_TAG] != first_tags[gitref.REF_TAG]
    assert tags[lineage.CHECKPOINT_TAG] != first_tags[lineage.CHECKPOINT_TAG]

    # A newcomer knows only the registry and the git remote.
    c = tmp_path / "c"
    sh("git", "clone", "-q", str(origin), str(c), cwd=tmp_path)
    champion = client.get_model_version_by_alias(model, "champion")
    run_tags = client.get_run(champion.run_id).data.tags
    assert (champion.version, run_tags) == ("2", tags)
    ref = run_tags[gitref.REF_TAG]
    sh("git", "fetch", "-q", "origin", ref, cwd=c)
    sh("git", "checkout", "-q", ref, cwd=c)
    assert sh("git", "rev-parse", "HEAD", cwd=c).strip() == run_tags[gitref.COMMIT_TAG]
    sh("dvc", "pull", cwd=c)
    repro = sh("dvc", "repro", cwd=c)
    assert "Running stage" not in repro, repro
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=c)
    restored = hashlib.sha256((c / "models/model.pt").read_bytes()).hexdigest()
    assert restored == run_tags[lineage.CHECKPOINT_TAG]


@pytest.mark.slow
def test_basic_auth_ci_promotes_viewer_only_reads_and_bad_logins_do_nothing(
    stack: dict[str, str],
    mlflow_workdir: Path,
    synthetic_mirror: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The stack's server runs basic-auth with the users of scripts/mlflow_users.py: strangers get
    401; `ci` (EDIT on the admin's mnist-mlp) trains, registers and promotes into it; `viewer`
    (READ) reads its runs and metrics and each change it tries gets 403; a wrong password stops
    train and promote before any work; no password of the stack leaks."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline import __main__ as cli
    from pipeline.paths import METRICS_FILE, MLFLOW_RUN_FILE, PROMOTION_FILE

    url = use_stack(monkeypatch, stack)
    monkeypatch.setenv("MNIST_MIRROR", str(synthetic_mirror))
    admin, viewer = ("admin", stack["ADMIN_PASSWORD"]), ("viewer", stack["VIEWER_PASSWORD"])
    logs: list[str] = []

    # Strangers: /health answers anyone (so it cannot check a login), the API does not.
    with urllib.request.urlopen(f"{url}/health", timeout=30) as answer:
        assert answer.status == 200
    assert call(url, "experiments/search", None, max_results="1")[0] == 401
    assert call(url, "experiments/search", ("ci", "wrong"), max_results="1")[0] == 401

    # ci: the pipeline into mnist-mlp (params' defaults), which the stack's admin created.
    Path("params.yaml").write_text(yaml.safe_dump(TINY_PIPELINE))
    for stage in ("download", "stats", "split", "validate", "train", "evaluate", "promote"):
        assert cli.main([stage]) == 0, stage
    logs += capfd.readouterr()
    record = json.loads(PROMOTION_FILE.read_text())
    run_id, version = record["run_id"], str(record["version"])
    experiment = json.loads(MLFLOW_RUN_FILE.read_text())["experiment_id"]
    assert record["decision"] == "promoted", record
    champion = [{"alias": "champion", "version": version}]
    assert (
        call(url, "registered-models/get", admin, name="mnist-mlp")[1]["registered_model"][
            "aliases"
        ]
        == champion
    )
    # It ran as ci, whose grant is EDIT (not MANAGE) on both; the lock model is gone again.
    for kind, resource in (
        ("experiment", experiment),
        ("registered_model", "mnist-mlp"),
    ):
        status, grant = call(
            url,
            "users/permissions/get",
            admin,
            api="3.0",
            username="ci",
            resource_type=kind,
            resource_id=resource,
        )
        assert (status, grant.get("permission")) == (200, "EDIT"), (kind, grant)
    assert call(url, "registered-models/get", admin, name="mnist-mlp.lock")[0] == 404

    # viewer: reads the runs and their metrics...
    status, found = call(url, "runs/search", viewer, {"experiment_ids": [experiment]})
    assert status == 200 and run_id in [r["info"]["run_id"] for r in found["runs"]]
    status, history = call(
        url, "metrics/get-history", viewer, run_id=run_id, metric_key="test_accuracy"
    )
    accuracy = json.loads(METRICS_FILE.read_text())["test_accuracy"]
    assert status == 200 and history["metrics"][0]["value"] == pytest.approx(accuracy)
    # ...and changes nothing of mnist-mlp's.
    refused = {
        "registered-models/alias": {"name": "mnist-mlp", "alias": "champion", "version": "1"},
        "registered-models/set-tag": {"name": "mnist-mlp", "key": "k", "value": "v"},
        "registered-models/update": {"name": "mnist-mlp", "description": "mine now"},
        "registered-models/rename": {"name": "mnist-mlp", "new_name": "renamed"},
        "model-versions/create": {"name": "mnist-mlp", "source": f"runs:/{run_id}/model"},
        "experiments/update": {"experiment_id": experiment, "new_name": "renamed"},
        "experiments/set-experiment-tag": {"experiment_id": experiment, "key": "k", "value": "v"},
        "experiments/delete": {"experiment_id": experiment},
        "runs/create": {"experiment_id": experiment},
        "runs/delete": {"run_id": run_id},
    }
    for endpoint, body in refused.items():
        assert call(url, endpoint, viewer, body)[0] == 403, endpoint
    delete_model = call(url, "registered-models/delete", viewer, {"name": "mnist-mlp"}, "DELETE")
    assert delete_model[0] == 403
    status, model = call(url, "registered-models/get", admin, name="mnist-mlp")
    assert model["registered_model"]["aliases"] == champion and not model["registered_model"].get(
        "tags"
    )
    status, kept = call(url, "experiments/get", admin, experiment_id=experiment)
    assert kept["experiment"]["name"] == "mnist-mlp"
    assert kept["experiment"]["lifecycle_stage"] == "active"
    # MLflow lets any logged-in user create experiments of their own (docs/team.md).
    assert (
        call(url, "experiments/create", viewer, {"name": f"own-{uuid.uuid4().hex[:8]}"})[0] == 200
    )

    # A wrong password: one error line from train and from promote, nothing written anywhere.
    def workspace() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in Path.cwd().rglob("*") if p.is_file()}

    def runs() -> list[str]:
        found = call(url, "runs/search", admin, {"experiment_ids": [experiment]})[1]
        return sorted(r["info"]["run_id"] for r in found["runs"])

    files, run_ids = workspace(), runs()
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    for stage in ("train", "promote"):
        assert cli.main([stage]) == 1, stage
        out, err = capfd.readouterr()
        logs += (out, err)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in out + err, err
        assert errors[0].startswith(
            f"error: MLflow tracking server {url} refused user 'ci' (HTTP 401: wrong or missing "
            "password); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        ), err
    assert workspace() == files and runs() == run_ids
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["MLFLOW_TRACKING_PASSWORD"])
    aliases = call(url, "registered-models/get", admin, name="mnist-mlp")[1]["registered_model"]
    assert aliases["aliases"] == champion

    # No password of the stack in a log line, a run record, an artifact or a workspace file...
    state = Path(stack["STACK_DIR"])
    secrets = [
        stack["MLFLOW_TRACKING_PASSWORD"],
        stack["VIEWER_PASSWORD"],
        stack["ADMIN_PASSWORD"],
        (state / "postgres.password").read_text().strip(),
        (state / "flask-secret-key.password").read_text().strip(),
    ]
    _, run = call(url, "runs/get", admin, run_id=run_id)
    # The run's artifacts (figures, reports, data docs) and the registered model's files.
    artifacts = tmp_path / "artifacts"
    MlflowClient(url).download_artifacts(run_id, "", str(artifacts / "run"))
    mlflow.artifacts.download_artifacts(
        f"models:/mnist-mlp/{version}", dst_path=str(artifacts / "model")
    )
    assert list(artifacts.glob("run/*")) and list(artifacts.rglob("MLmodel")), "nothing downloaded"
    for secret in secrets:
        assert secret not in "".join(logs) and secret not in json.dumps(run)
    assert files_holding(artifacts, *secrets) == [] and files_holding(Path.cwd(), *secrets) == []
    # ...nor on a command line (ps); in the stack's folder only in its password files and the
    # auth app's config (which has no other way to get its database password).
    exposed = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes()
            if any(secret.encode() in words for secret in secrets):
                exposed.append(f"pid {cmdline.parent.name}: {words.split(bytes(1))[0].decode()}")
    assert exposed == []
    holders = {Path(f).name for f in files_holding(state, *secrets)}
    assert holders <= {
        "ci.password",
        "viewer.password",
        "admin.password",
        "postgres.password",
        "flask-secret-key.password",
        "auth.ini",
    }, holders
