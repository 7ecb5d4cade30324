"""DVC experiments: each one is also an MLflow run in the repository's store, queued ones
included."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.registry.tracking import tracking_uri

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


@pytest.mark.slow
def test_a_queued_experiment_that_beats_the_champion_leaves_it_and_is_promoted_on_request(
    dvc_project: Path,
) -> None:
    """Issue 17: a queued `dvc exp run` only says it would promote; `promote --run` then does."""
    import mlflow

    dvc("repro", "promote")  # the main line, a clean commit of main (report is not needed here)
    first = json.loads(Path("reports/promotion.json").read_text())
    assert (first["decision"], first["may_move_champion"]) == ("promoted", True)
    assert first["may_move_champion_reason"].startswith("clean commit ")

    dvc("exp", "run", "--queue", "promote", "-n", "challenger", "-S", "train.epochs=6")
    output = dvc("exp", "run", "--run-all", timeout=QUEUE_TIMEOUT_S)
    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    assert client.get_registered_model("mnist-mlp").aliases == {"champion": 1}
    experiment = client.get_experiment_by_name("mnist-mlp")
    (run,) = client.search_runs([experiment.experiment_id], "tags.dvc_experiment = 'challenger'")
    tags = run.data.tags
    said = f"{tags['promotion.decision']}: {tags['promotion.reason']}"
    assert tags["promotion.decision"] == "would promote", said
    assert tags["promotion.may_move_champion"] == "false"
    # DVC told the queued stage it runs an experiment (DVC_EXP_BASELINE_REV, DVC_EXP_NAME).
    assert tags["promotion.may_move_champion_reason"].startswith("DVC experiment 'challenger'")
    assert f"python -m pipeline promote --run {run.info.run_id}" in output
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    (ref,) = [r for r in refs if r.endswith("/challenger")]
    committed = subprocess.run(
        ["git", "show", f"{ref}:reports/promotion.json"], check=True, capture_output=True, text=True
    ).stdout
    record = json.loads(committed)
    assert (record["decision"], record["run_id"], record["version"]) == (
        "would promote",
        run.info.run_id,
        2,
    )
    assert record["champion_version"] == 1 and record["test_accuracy"] > first["test_accuracy"]

    promoted = subprocess.run(
        [sys.executable, "-m", "pipeline", "promote", "--run", run.info.run_id],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert "promote: promoted: version 2 vs champion version 1" in promoted.stderr
    assert client.get_registered_model("mnist-mlp").aliases == {"champion": 2}
    assert client.get_run(run.info.run_id).data.tags["promotion.decision"] == "promoted"
