"""The pipeline against a real `mlflow server`: what a user of a shared tracking server finds
there."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.paths import FIGURES_DIR, METRICS_FILE, MLFLOW_RUN_FILE
from tests.helpers import mlflow_service


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real tracking server with its own sqlite store and served artifacts."""
    store = f"sqlite:///{tmp_path / 'server.db'}"
    artifacts = ("--artifacts-destination", str(tmp_path / "server-artifacts"))
    with mlflow_service("server", store, tmp_path / "server.log", *artifacts) as url:
        yield url


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
        artifact_directory_path="artifacts",
    )
    # the served model's files (pipeline/serving/registration.py): the graph and the references
    assert sorted(f["path"] for f in files["files"]) == [
        "artifacts/graph.pt2",
        "artifacts/monitor_reference.npz",
        "artifacts/ood_reference.json",
    ]

    registered = rest(mlflow_server, "registered-models/get", name="mnist-mlp")["registered_model"]
    assert registered["aliases"] == [{"alias": "champion", "version": "1"}]
    champion = rest(mlflow_server, "registered-models/alias", name="mnist-mlp", alias="champion")[
        "model_version"
    ]
    assert champion["run_id"] == run_id and champion["source"] == f"models:/{model_id}"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["promotion.decision"] == "promoted"

    # Datasets, the data checks and the model card also reach a server (the card through its
    # logged-model artifact upload).
    assert sorted(i["dataset"]["name"] for i in run["inputs"]["dataset_inputs"]) == [
        "custom-test",
        "custom-train",
        "custom-valid",
    ]
    assert tags["data_validation.success"] == "true"
    cards = rest(
        mlflow_server, f"logged-models/{model_id}/artifacts/directories", artifact_directory_path=""
    )
    assert "model_card.md" in [f["path"] for f in cards["files"]]

    # Artifacts went through the server to its destination, none into the project.
    assert list((tmp_path / "server-artifacts").rglob("graph.pt2"))
    assert not Path("mlruns").exists() and not Path("mlartifacts").exists()
