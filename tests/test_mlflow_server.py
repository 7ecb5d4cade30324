"""The pipeline against a real `mlflow server`: what a user of a shared tracking server finds
there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.paths import FIGURES_DIR, METRICS_FILE, MLFLOW_RUN_FILE
from tests.helpers import free_port

STARTUP_TIMEOUT_S = 180


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real tracking server with its own sqlite store and served artifacts; killed whatever
    happens."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
    ]
    # Its own session, so that the workers it forks go down with it.
    with open(tmp_path / "server.log", "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert server.poll() is None, (
                "mlflow server exited:\n" + (tmp_path / "server.log").read_text()[-3000:]
            )
            assert time.monotonic() < deadline, (
                f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s"
            )
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def rest(url: str, endpoint: str, **query: str) -> dict:
    address = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(address, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_a_pipeline_run_on_a_tracking_server_has_params_curves_figures_model_and_champion(
    mlflow_server: str, run_stages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_stages("download", "stats", "split", "validate")
    params = run_stages("train", "evaluate", "report", "promote")
    run_id = json.loads(MLFLOW_RUN_FILE.read_text())["run_id"]

    run = rest(mlflow_server, "runs/get", run_id=run_id)["run"]
    logged = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert (
        logged["train.epochs"] == "2"
        and logged["model.hidden"] == "[32]"
        and logged["train.loss"] == "cross_entropy"
    )
    assert set(logged) == set(params.flat()), "every param, under its params.yaml name"
    for metric in (
        "train_loss",
        "train_acc",
        "valid_acc",
    ):  # evaluate adds its own valid_loss point
        history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=metric)[
            "metrics"
        ]
        assert [point["step"] for point in history] == [1, 2], metric
    latest = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert latest["test_accuracy"] == pytest.approx(
        json.loads(METRICS_FILE.read_text())["test_accuracy"]
    )

    figures = rest(mlflow_server, "artifacts/list", run_id=run_id, path="report/figures")["files"]
    assert {Path(f["path"]).name for f in figures} == {p.name for p in FIGURES_DIR.glob("*.png")}
    assert all(f["file_size"] > 10_000 for f in figures)

    model_id = run["outputs"]["model_outputs"][0]["model_id"]
    model = rest(mlflow_server, f"logged-models/{model_id}")["model"]["info"]
    assert model["source_run_id"] == run_id and model["status"] == "LOGGED_MODEL_READY"
    files = rest(
        mlflow_server,
        f"logged-models/{model_id}/artifacts/directories",
        artifact_directory_path="data",
    )
    assert [f["path"] for f in files["files"]] == ["data/model.pt2"]

    registered = rest(mlflow_server, "registered-models/get", name="mnist-mlp")["registered_model"]
    assert registered["aliases"] == [{"alias": "champion", "version": "1"}]
    champion = rest(mlflow_server, "registered-models/alias", name="mnist-mlp", alias="champion")[
        "model_version"
    ]
    assert champion["run_id"] == run_id and champion["source"] == f"models:/{model_id}"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["promotion.decision"] == "promoted"

    # Artifacts went through the server to its destination, none into the project.
    assert list((tmp_path / "server-artifacts").rglob("model.pt2"))
    assert not Path("mlruns").exists() and not Path("mlartifacts").exists()
