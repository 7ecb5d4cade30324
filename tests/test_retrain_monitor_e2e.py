"""The scheduled job acts on what the champion was asked (slow): the real `mlflow models serve`
records to a real store, `scripts/retrain.sh` runs `monitor` first, fails on a drifted window
with no new labelled data (the champion kept), and retrains on the main line once a labelled
batch arrives."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.idx import encode_idx
from pipeline.paths import DATA_VALIDATION_FILE, MONITORING_FILE, PROMOTION_FILE
from tests.helpers import background_server, free_port, serve_command, synthetic_digits

NAME = "mnist-mlp"


def retrain(env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["scripts/retrain.sh"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, **(env or {})},
    )


def ask(port: int, rows: list) -> None:
    body = json.dumps({"inputs": rows}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200


def champion(project: Path) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return int(client.get_registered_model(NAME).aliases["champion"])


def labelled_batch(inbox: Path, name: str, count: int) -> None:
    images, labels = synthetic_digits(count, seed=77)
    folder = inbox / name
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(encode_idx(images))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(encode_idx(labels))


@pytest.mark.slow
def test_drift_fails_the_job_and_labelled_data_retrains_on_the_main_line(
    dvc_project: Path, records_in_a_scratch_store: Path, tmp_path: Path
) -> None:
    first = retrain()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "no records in the last 7 days" in first.stderr + first.stdout
    assert champion(dvc_project) == 1

    # The served champion is asked ordinary digits, then inverted ones: the records hold both,
    # and the last 7 days' window drifts.
    test_images, _ = synthetic_digits(300, seed=5)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{dvc_project / 'mlflow.db'}"}
    with background_server(
        serve_command(f"models:/{NAME}@champion", port),
        f"http://127.0.0.1:{port}/ping",
        tmp_path / "serve.log",
        env,
    ):
        rows = (test_images.reshape(300, -1) / 255).astype(np.float32)
        for start in range(0, 300, 100):  # 3 requests: 3 record files
            ask(port, (1 - rows[start : start + 100]).tolist())
    stored = list(records_in_a_scratch_store.rglob("*.parquet"))
    assert len(stored) == 3

    drifted = retrain()
    assert drifted.returncode == 1, drifted.stdout[-3000:] + drifted.stderr[-3000:]
    last_line = drifted.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: the monitor found drift and there is no new labelled data")
    assert "ood_rate" in last_line and "champion is kept" in last_line
    assert json.loads(MONITORING_FILE.read_text())["verdict"] == "drift"
    assert champion(dvc_project) == 1 and "Running stage 'train'" not in drifted.stdout
    assert sorted(records_in_a_scratch_store.rglob("*.parquet")) == sorted(stored)
    # Each job's monitor is a run of the `monitoring` experiment: the UI charts drift over time.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    monitoring = client.get_experiment_by_name("monitoring")
    runs = client.search_runs([monitoring.experiment_id], order_by=["attributes.start_time ASC"])
    assert [(r.data.tags["verdict"], r.data.metrics["drift"]) for r in runs] == [
        ("no records", 0),
        ("drift", 1),
    ]
    assert runs[1].data.metrics["p_ood_rate"] < 0.01

    inbox = tmp_path / "inbox"
    labelled_batch(inbox, "batch-1", 120)
    relabelled = retrain({"MNIST_LABELLED": str(inbox)})
    output = relabelled.stdout + relabelled.stderr
    assert relabelled.returncode == 0, output[-4000:]
    assert "Running stage 'train'" in relabelled.stdout
    subject = subprocess.run(
        ["git", "log", "-1", "--format=%s"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert subject == "data: labelled batches batch-1"
    tracked = subprocess.run(
        ["git", "status", "--porcelain", "data/labelled.json", "data/labelled.dvc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == "", "the new dataset version is committed"
    counts = json.loads(DATA_VALIDATION_FILE.read_text())["counts"]
    assert counts["train"] == 540 + 120
    promotion = json.loads(PROMOTION_FILE.read_text())
    assert promotion["decision"] in ("promoted", "kept"), promotion  # decided, not "would ..."
    assert promotion["may_move_champion"], promotion["may_move_champion_reason"]
    assert promotion["may_move_champion_reason"].startswith("clean commit")
    assert promotion["data_changed_since_champion"], "the gate sees the new dataset version"
