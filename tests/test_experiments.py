"""DVC experiments: each one is also an MLflow run in the repository's store, queued ones
included."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.tracking import tracking_uri

QUEUE_TIMEOUT_S = 1500


def test_default_store_is_the_main_repositorys_even_in_a_queued_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == "sqlite:///mlflow.db"
    # DVC runs stages with DVC_ROOT set; queued ones run elsewhere but DVC_ROOT names the main repo.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def dvc(*args: str, timeout: float = 900) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def experiments() -> dict[str, dict]:
    """`dvc exp show --json`, flattened to experiment name -> {params, test_accuracy}."""
    found = {}
    for baseline in json.loads(dvc("exp", "show", "--json")):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "test_accuracy": data["metrics"]["reports/metrics.json"]["data"][
                        "test_accuracy"
                    ],
                }
    return found


@pytest.mark.slow
def test_queued_sweep_and_a_workspace_experiment_are_tracked_in_the_main_store(
    dvc_project: Path,
) -> None:
    import mlflow

    # Queued first, in a repository that has never run: the MLflow experiment itself is created
    # from inside the queue's temp workspace, so its artifacts must still land in this repository.
    dvc("exp", "run", "--queue", "-S", "model.hidden=[16],[48]", "-S", "model.activation=tanh")
    dvc("queue", "start")
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while any(state in dvc("queue", "status") for state in ("Queued", "Running")):
        assert time.monotonic() < deadline, dvc("queue", "status")
        time.sleep(5)
    assert "Failed" not in dvc("queue", "status"), dvc("queue", "logs", "--help")
    dvc("exp", "run", "-n", "faster-lr", "-S", "train.lr=0.003")

    shown = experiments()
    assert len(shown) == 3
    hidden = sorted(
        (e["params"]["model"]["hidden"], e["params"]["model"]["activation"]) for e in shown.values()
    )
    assert hidden == [([16], "tanh"), ([32], "relu"), ([48], "tanh")]
    assert shown["faster-lr"]["params"]["train"]["lr"] == 0.003
    assert all(0 <= e["test_accuracy"] <= 1 for e in shown.values())

    assert not list(Path(".dvc/tmp/exps").rglob("mlflow.db")), (
        "a store was left in the queue's temp workspace"
    )
    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("mnist-mlp").experiment_id)
    by_name = {run.data.tags.get("dvc_experiment"): run for run in runs}
    assert set(by_name) == set(shown)
    for name, run in by_name.items():
        assert run.data.metrics["test_accuracy"] == pytest.approx(shown[name]["test_accuracy"])
        figures = [
            Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report/figures")
        ]
        assert "learning_curves.png" in figures, name
        local = (
            Path(run.info.artifact_uri.removeprefix("file://"))
            / "report"
            / "figures"
            / "learning_curves.png"
        )
        assert local.is_file() and dvc_project in local.parents, local
