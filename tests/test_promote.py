"""Stage promote: the champion alias moves only to a version that beats it by promote.min_delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import artifacts, promote, tracking
from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.paths import METRICS_FILE, PROMOTION_FILE
from pipeline.promote import Champion, decide

NAME = "mnist-mlp"


@pytest.mark.parametrize(
    ("accuracy", "champion", "min_delta", "promoted", "words"),
    [
        (0.5, None, 0.0, True, "no champion yet: version 3 becomes the first"),
        (0.97, Champion(2, 0.97, "r"), 0.0, False, "(+0.0000): the gain must be more than 0"),
        (0.9701, Champion(2, 0.97, "r"), 0.0, True, "beats it by at least min_delta 0.0"),
        (0.96, Champion(2, 0.97, "r"), 0.0, False, "(-0.0100)"),
        (
            0.981,
            Champion(2, 0.980, "r"),
            0.001,
            True,
            "beats it",
        ),  # 0.981 - 0.980 < 0.001 in floats
        (0.9809, Champion(2, 0.980, "r"), 0.001, False, "must be at least 0.001"),
        (0.5, Champion(3, 0.9, "r"), 0.0, False, "version 3 is already the champion"),
    ],
)
def test_decide(
    accuracy: float, champion: Champion | None, min_delta: float, promoted: bool, words: str
) -> None:
    decision = decide(3, accuracy, champion, min_delta)
    assert decision.promote is promoted
    assert words in decision.reason


def finished_run(accuracy: float | None, register: bool = True) -> str:
    """What train and evaluate leave: a run with test_accuracy, its registered version, the local
    files."""
    import mlflow

    tracking.configure()
    client = mlflow.MlflowClient()
    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run() as run:
        if accuracy is not None:
            mlflow.log_metric("test_accuracy", accuracy)
    run_id = run.info.run_id
    if register:
        if not client.search_registered_models(f"name='{NAME}'"):
            client.create_registered_model(NAME)
        client.create_model_version(NAME, source=f"runs:/{run_id}/model", run_id=run_id)
    metrics = {key: 0.1 for key in artifacts.METRIC_KEYS}
    artifacts.write_metrics({**metrics, "test_accuracy": accuracy})
    artifacts.write_run_reference(run_id, run.info.experiment_id)
    return run_id


def promote_stage(min_delta: float = 0.0) -> dict:
    promote.main(parse_params({"promote": {"min_delta": min_delta}}))
    return json.loads(PROMOTION_FILE.read_text())


def champion_version() -> int | None:
    import mlflow

    number = mlflow.MlflowClient().get_registered_model(NAME).aliases.get("champion")
    return None if number is None else int(number)


def run_tags(run_id: str) -> dict[str, str]:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).data.tags


def test_first_model_becomes_champion_and_an_equal_one_does_not(mlflow_workdir: Path) -> None:
    first = finished_run(0.95)
    record = promote_stage()
    assert record == {
        "decision": "promoted",
        "reason": "no champion yet: version 1 becomes the first",
        "registered_model": NAME,
        "alias": "champion",
        "run_id": first,
        "version": 1,
        "test_accuracy": 0.95,
        "previous_champion_version": None,
        "previous_champion_test_accuracy": None,
        "champion_version": 1,
        "min_delta": 0.0,
        "data_changed_since_champion": None,
    }
    assert champion_version() == 1
    assert run_tags(first)["promotion.decision"] == "promoted"

    second = finished_run(0.95)
    record = promote_stage()
    assert (record["decision"], record["version"], record["champion_version"]) == ("kept", 2, 1)
    assert (record["previous_champion_version"], record["previous_champion_test_accuracy"]) == (
        1,
        0.95,
    )
    assert "version 2 test accuracy 0.9500 vs champion version 1 0.9500" in record["reason"]
    assert champion_version() == 1
    tags = run_tags(second)
    assert tags["promotion.decision"] == "kept" and tags["promotion.reason"] == record["reason"]


def test_min_delta_decides_between_better_models(mlflow_workdir: Path) -> None:
    finished_run(0.90)
    promote_stage(min_delta=0.01)
    finished_run(0.905)  # better, but by less than min_delta
    assert promote_stage(min_delta=0.01)["decision"] == "kept"
    assert champion_version() == 1
    finished_run(0.92)
    record = promote_stage(min_delta=0.01)
    assert (
        record["decision"],
        record["champion_version"],
        record["previous_champion_version"],
    ) == ("promoted", 3, 1)
    assert champion_version() == 3
    # Promoting the same run again changes nothing and says so.
    record = promote_stage(min_delta=0.01)
    assert record["decision"] == "kept" and record["reason"] == "version 3 is already the champion"
    assert champion_version() == 3


def test_champion_accuracy_comes_from_the_registry_not_local_files(mlflow_workdir: Path) -> None:
    finished_run(0.97)
    promote_stage()
    finished_run(0.96)  # the local metrics.json now says 0.96; the champion's run still says 0.97
    record = promote_stage()
    assert record["previous_champion_test_accuracy"] == 0.97 and record["decision"] == "kept"


def test_missing_pieces_are_clear_errors(mlflow_workdir: Path) -> None:
    with pytest.raises(
        PipelineError,
        match=r"reports/metrics.json is missing; run the evaluate stage first",
    ):
        promote_stage()
    finished_run(0.9, register=False)
    with pytest.raises(
        PipelineError,
        match=r"has no version of registered model 'mnist-mlp'.*rerun the train stage",
    ):
        promote_stage()
    finished_run(None)
    with pytest.raises(PipelineError, match=r"has no numeric test_accuracy"):
        promote_stage()
    # A champion whose run lacks test_accuracy cannot be compared with: say how to fix it.
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    finished_run(0.9)
    with pytest.raises(
        PipelineError, match=r"champion version 1 of 'mnist-mlp' has no test_accuracy metric"
    ):
        promote_stage()
    assert not PROMOTION_FILE.exists()


@pytest.mark.slow
def test_two_scheduled_retrains_leave_one_champion_and_explain_the_second(
    dvc_project: Path,
) -> None:
    """scripts/retrain.sh twice on unchanged data: both retrain; the identical second model is
    kept."""
    import subprocess

    import mlflow

    def retrain() -> tuple[str, dict, dict]:
        result = subprocess.run(
            ["scripts/retrain.sh"], capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        record = json.loads(PROMOTION_FILE.read_text())
        assert f"== promotion: {record['decision']}: {record['reason']}" in result.stdout
        return result.stdout, record, json.loads(METRICS_FILE.read_text())

    _, first, first_metrics = retrain()
    assert (first["decision"], first["champion_version"]) == ("promoted", 1)
    output, second, second_metrics = retrain()
    assert "retraining anyway" in output and "Running stage 'train'" in output
    assert second["run_id"] != first["run_id"] and second["version"] == 2
    assert second_metrics == first_metrics, "same data, params and seed must give the same model"
    assert second["decision"] == "kept" and second["champion_version"] == 1
    assert second["reason"] == (
        "version 2 test accuracy {0:.4f} vs champion version 1 {0:.4f} (+0.0000): "
        "the gain must be more than 0 to promote".format(first_metrics["test_accuracy"])
    )
    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    assert {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {
        "champion": 1
    }
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
