"""Stage promote: the champion alias moves only to a version that passes every gate
(pipeline/quality/gate.py).

The gate's logic is tested on crafted numbers in test_gate.py; here the stage reads the champion's
evidence from the registry (metrics, signature, per-image answers) and acts on the verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import __main__ as cli
from pipeline import artifacts
from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.paths import METRICS_FILE, PREDICTIONS_FILE, PROMOTION_FILE
from pipeline.registry import tracking
from pipeline.stages import promote
from tests.helpers import answer_table, log_promotion_evidence, permission_denied

NAME = "mnist-mlp"


def finished_run(
    accuracy: float | None,
    register: bool = True,
    ece: float = 0.003,
    wrong: dict[int, int] | None = None,
    inputs: int = 784,
    name: str = NAME,
) -> str:
    """What train and evaluate leave: a run with its metrics, its model's signature (MLmodel only)
    and its test answers, the registered version, and the local metrics.json, predictions.csv and
    run reference."""
    import mlflow

    tracking.configure()
    client = mlflow.MlflowClient()
    mlflow.set_experiment("mnist-mlp")
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    table = answer_table(wrong)
    table.to_csv(PREDICTIONS_FILE, index=False)
    with mlflow.start_run() as run:
        pass
    log_promotion_evidence(client, run.info.run_id, accuracy, ece, table, inputs)
    run_id = run.info.run_id
    client.log_param(run_id, "mlflow.registered_model", NAME)  # what `promote --run` reads
    client.log_param(run_id, "data.image_size", 28 if inputs == 784 else 16)
    if register:
        if not client.search_registered_models(f"name='{name}'"):
            client.create_registered_model(name)
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    metrics = {key: 0.1 for key in artifacts.METRIC_KEYS}
    artifacts.write_metrics({**metrics, "test_accuracy": accuracy, "test_ece": ece})
    artifacts.write_run_reference(run_id, run.info.experiment_id)
    return run_id


def promote_stage(
    min_delta: float = 0.0, allow_contract_change: bool = False, **gate: float | bool
) -> dict:
    promote.main(parse_params({"promote": {"min_delta": min_delta, **gate}}), allow_contract_change)
    return json.loads(PROMOTION_FILE.read_text())


def champion_version(name: str = NAME) -> int | None:
    import mlflow

    number = mlflow.MlflowClient().get_registered_model(name).aliases.get("champion")
    return None if number is None else int(number)


def run_tags(run_id: str) -> dict[str, str]:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).data.tags


NO_GIT = (
    "not a git checkout: no branch or commit to judge, and dvc exp needs git, so every run here "
    "is the main line"
)
SIG_784 = "inputs [Tensor('float32', (-1, 784))] -> outputs [Tensor('float32', (-1, 10))]"


def test_first_model_becomes_champion_and_an_equal_one_does_not(mlflow_workdir: Path) -> None:
    first = finished_run(0.95)
    record = promote_stage()
    assert record == {
        "decision": "promoted",
        "reason": "no champion yet: version 1 becomes the first",
        "failed_gates": [],
        "may_move_champion": True,
        "may_move_champion_reason": NO_GIT,
        "registered_model": NAME,
        "alias": "champion",
        "run_id": first,
        "version": 1,
        "test_accuracy": 0.95,
        "test_ece": 0.003,
        "signature": SIG_784,
        "previous_champion_version": None,
        "previous_champion_test_accuracy": None,
        "previous_champion_test_ece": None,
        "previous_champion_signature": None,
        "champion_version": 1,
        "digits": [],
        "settings": {
            "min_delta": 0.0,
            "class_drop_p": 0.01,
            "max_class_drop": 1.0,
            "max_ece_increase": 0.01,
            "allow_contract_change": False,
        },
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
    assert record["failed_gates"] == ["accuracy"]
    assert "accuracy: 0.9500 vs 0.9500 (+0.0000); the gain must be more than 0" in record["reason"]
    assert [d["p_value"] for d in record["digits"]] == [1.0] * 10
    assert champion_version() == 1
    tags = run_tags(second)
    assert tags["promotion.decision"] == "kept" and tags["promotion.reason"] == record["reason"]
    assert tags["promotion.failed_gates"] == "accuracy"


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


def test_a_better_model_that_is_worse_on_one_digit_is_kept_out_naming_the_digit(
    mlflow_workdir: Path,
) -> None:
    finished_run(0.97)
    promote_stage()
    run_id = finished_run(
        0.98, wrong={8: 9}
    )  # better overall, 9 of the 100 eights newly wrong: p = 0.002
    record = promote_stage()
    assert record["decision"] == "kept" and record["failed_gates"] == ["class_drop"]
    assert (
        "digit 8 1.0000 -> 0.9100 (-9.00 points, 9 newly wrong vs 0 newly right, McNemar p=0.002)"
        in record["reason"]
    )
    eight = record["digits"][8]
    assert (eight["digit"], eight["failed"], eight["newly_wrong"]) == (8, True, 9)
    assert eight["p_value"] == pytest.approx(0.5**9)
    assert json.loads(run_tags(run_id)["promotion.digit_p_values"])["8"] == pytest.approx(
        0.5**9, abs=1e-6
    )
    assert champion_version() == 1


def test_a_worse_calibrated_model_is_kept_out(mlflow_workdir: Path) -> None:
    finished_run(0.97, ece=0.004)
    promote_stage()
    finished_run(0.98, ece=0.02)
    record = promote_stage()
    assert (
        record["failed_gates"] == ["calibration"]
        and "test ECE 0.0200 vs 0.0040 (+0.0160)" in record["reason"]
    )
    assert promote_stage(max_ece_increase=0.02)["decision"] == "promoted"


def test_a_new_contract_is_never_promoted_by_itself_but_can_be_deliberately(
    mlflow_workdir: Path,
) -> None:
    finished_run(0.97)
    promote_stage()
    run_id = finished_run(0.99, inputs=256)  # a 16x16 model registered under the 28x28 name
    record = promote_stage()
    assert record["decision"] == "kept" and record["failed_gates"] == ["contract"]
    assert "version 2 has signature [inputs [Tensor('float32', (-1, 256))]" in record["reason"]
    assert f"champion version 1 serves [{SIG_784}]" in record["reason"]
    assert "python -m pipeline promote --allow-contract-change" in record["reason"]
    assert run_tags(run_id)["promotion.failed_gates"] == "contract"
    assert champion_version() == 1
    Path("params.yaml").write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "promote", "--allow-contract-change"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(PROMOTION_FILE.read_text())
    assert (
        record["decision"] == "promoted"
        and "as allowed by --allow-contract-change" in record["reason"]
    )
    assert champion_version() == 2


def test_champion_numbers_come_from_the_registry_not_local_files(mlflow_workdir: Path) -> None:
    finished_run(0.97, wrong={3: 2})
    promote_stage()
    finished_run(
        0.96
    )  # the local files now hold this run's numbers; the champion's run still its own
    record = promote_stage()
    assert record["previous_champion_test_accuracy"] == 0.97 and record["decision"] == "kept"
    assert record["digits"][3]["champion_accuracy"] == 0.98


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
    # A champion whose run lacks the gate's numbers cannot be compared with: say how to fix it.
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    finished_run(0.9)
    with pytest.raises(
        PipelineError,
        match=r"champion version 1 of 'mnist-mlp' has no test_accuracy or test_ece metric",
    ):
        promote_stage()
    assert not PROMOTION_FILE.exists()


def test_a_champion_registered_without_a_run_is_a_clear_error(mlflow_workdir: Path) -> None:
    import mlflow

    finished_run(0.9)
    client = mlflow.MlflowClient()
    orphan = client.create_model_version(NAME, source=str(mlflow_workdir / "model"))  # no run_id
    client.set_registered_model_alias(NAME, "champion", orphan.version)
    with pytest.raises(
        PipelineError,
        match=r"champion version 2 of 'mnist-mlp' was registered without a run, so nothing can be "
        r"compared with it; .*delete_registered_model_alias",
    ):
        promote_stage()
    assert not PROMOTION_FILE.exists()


def test_answers_to_a_different_test_set_are_refused(mlflow_workdir: Path) -> None:
    finished_run(0.9)
    promote_stage()
    finished_run(0.95)
    answer_table().iloc[:-5].to_csv(PREDICTIONS_FILE, index=False)
    with pytest.raises(
        PipelineError, match=r"do not hold the same test labels.*evaluate both on the same test set"
    ):
        promote_stage()


@pytest.mark.slow
def test_two_scheduled_retrains_leave_one_champion_and_explain_the_second(
    dvc_project: Path,
) -> None:
    """scripts/retrain.sh twice on unchanged data: both retrain; the identical second model is
    kept. The committee's pipeline sits beside it, never run, as in the repository."""
    import shutil
    import subprocess

    import mlflow

    (dvc_project / "committee").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "committee" / "dvc.yaml", "committee")

    def retrain() -> tuple[str, dict, dict]:
        result = subprocess.run(
            ["scripts/retrain.sh"], capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # The metrics diff reads the root pipeline's, all in the workspace after a retrain: no
        # warning about the committee's, which exist only after `make committee`. (HEAD, the
        # fixture's first commit, has none yet.)
        warnings = [line for line in result.stderr.splitlines() if "failed to load" in line]
        assert not any("workspace" in line for line in warnings), warnings
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
    assert second["failed_gates"] == ["accuracy"] and second["reason"] == (
        "version 2 vs champion version 1 kept out by accuracy: {0:.4f} vs {0:.4f} (+0.0000); "
        "the gain must be more than 0".format(first_metrics["test_accuracy"])
    )
    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    assert {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {
        "champion": 1
    }
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2


def test_each_input_size_has_its_own_registered_model_and_champion(mlflow_workdir: Path) -> None:
    finished_run(0.97)
    promote_stage()
    finished_run(0.99, inputs=256, name="mnist-mlp-16x16")  # what train registers at image_size 16
    promote.main(parse_params({"data": {"image_size": 16}}))
    record = json.loads(PROMOTION_FILE.read_text())
    assert (record["registered_model"], record["decision"]) == ("mnist-mlp-16x16", "promoted")
    assert champion_version("mnist-mlp-16x16") == 1 and champion_version() == 1
    assert tracking.registered_name("mnist-mlp", 28) == "mnist-mlp"


EXPERIMENT = {"DVC_EXP_BASELINE_REV": "0123456789abcdef", "DVC_EXP_NAME": "lr-trial"}
OFF_LINE = "DVC experiment 'lr-trial' (dvc exp run from commit 0123456), not the main line"


def test_an_experiment_registers_and_says_what_it_would_do_but_never_moves_the_champion(
    mlflow_workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in EXPERIMENT.items():
        monkeypatch.setenv(key, value)
    finished_run(0.90)
    record = promote_stage()
    assert (record["decision"], record["champion_version"]) == ("would promote", None)
    assert champion_version() is None, "not even the first champion comes from an experiment"
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    promote_stage()  # the same run, now on the main line: version 1 becomes champion
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", EXPERIMENT["DVC_EXP_BASELINE_REV"])

    better = finished_run(0.97)
    capsys.readouterr()
    record = promote_stage()
    assert record["decision"] == "would promote" and record["failed_gates"] == []
    assert (record["version"], record["champion_version"]) == (2, 1)
    assert (record["may_move_champion"], record["may_move_champion_reason"]) == (False, OFF_LINE)
    assert record["reason"].startswith("version 2 vs champion version 1: test accuracy 0.9700")
    assert champion_version() == 1
    tags = run_tags(better)
    assert tags["promotion.decision"] == "would promote"
    assert tags["promotion.reason"] == record["reason"]
    assert tags["promotion.may_move_champion"] == "false"
    assert tags["promotion.may_move_champion_reason"] == OFF_LINE
    said = capsys.readouterr().err.strip()
    assert said.endswith(
        f"[{OFF_LINE}; the champion does not move]; promote it with: "
        f"python -m pipeline promote --run {better}"
    )

    finished_run(0.80)
    record = promote_stage()
    assert (record["decision"], record["failed_gates"]) == ("would keep", ["accuracy"])
    assert champion_version() == 1

    # Deliberately, through the same gates, from the run's evidence in MLflow: the local files
    # now hold the 0.80 run's numbers and answers, which must not matter.
    Path("params.yaml").write_text("{}\n")
    before = PROMOTION_FILE.read_bytes()
    assert cli.main(["promote", "--run", better]) == 0
    assert champion_version() == 2
    tags = run_tags(better)
    assert (tags["promotion.decision"], tags["promotion.may_move_champion"]) == ("promoted", "true")
    assert tags["promotion.may_move_champion_reason"] == (
        f"deliberate: python -m pipeline promote --run {better}"
    )
    assert PROMOTION_FILE.read_bytes() == before, "the workspace's record stays its own run's"
    assert "promote: promoted: version 2 vs champion version 1" in capsys.readouterr().err
    # The gates still apply: the 0.80 run is kept out, deliberately asked or not.
    worse = artifacts.read_run_reference()["run_id"]
    assert cli.main(["promote", "--run", worse]) == 0
    assert run_tags(worse)["promotion.decision"] == "kept" and champion_version() == 2

    finished_run(0.99)
    record = promote_stage(from_experiments=True)
    assert (record["decision"], record["champion_version"]) == ("promoted", 4)
    assert record["may_move_champion_reason"] == (
        f"{OFF_LINE}; promote.from_experiments is true, so it promotes by itself"
    )


def test_promote_run_names_a_missing_run_or_missing_evidence_in_one_error_line(
    mlflow_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    Path("params.yaml").write_text("{}\n")

    def error_of(run_id: str) -> str:
        capsys.readouterr()
        assert cli.main(["promote", "--run", run_id]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        return err

    finished_run(0.9)
    missing = error_of("no-such-run")
    assert "cannot read run 'no-such-run' from the tracking store sqlite:///" in missing
    assert "(Run with id=no-such-run not found); copy the id from" in missing
    with mlflow.start_run() as bare:
        pass
    assert "has no mlflow.registered_model and data.image_size params" in error_of(bare.info.run_id)
    unregistered = finished_run(0.9, register=False)
    assert "has no version of registered model 'mnist-mlp'" in error_of(unregistered)
    client = mlflow.MlflowClient()  # a run train registered but evaluate never reached
    nometrics = client.create_run(client.get_experiment_by_name("mnist-mlp").experiment_id)
    run_id = nometrics.info.run_id
    client.log_param(run_id, "mlflow.registered_model", NAME)
    client.log_param(run_id, "data.image_size", 28)
    client.create_model_version(NAME, source=f"runs:/{run_id}/model", run_id=run_id)
    assert (
        "version 2 of 'mnist-mlp' has no test_accuracy or test_ece metric in run "
        f"{run_id}, so nothing can be compared with it; only a run that finished its evaluate "
        "stage can be promoted"
    ) in error_of(run_id)
    assert champion_version() is None


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error:` line a failing command prints."""
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_a_deleted_run_is_refused_before_the_champion_moves(
    mlflow_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow refuses a deleted run's tags, and `mlflow gc` would erase its model files."""
    import mlflow

    finished_run(0.9)
    promote_stage()
    deleted = finished_run(0.95)
    mlflow.MlflowClient().delete_run(deleted)
    Path("params.yaml").write_text("{}\n")
    assert cli_error(["promote", "--run", deleted], capsys) == (
        f"error: run {deleted} is deleted in {tracking.tracking_uri()}, so its version cannot "
        "become champion (MLflow refuses its tags, and `mlflow gc` would erase its model); "
        f"restore it (mlflow runs restore --run-id {deleted}) or promote another run"
    )
    with pytest.raises(PipelineError, match=f"run {deleted} is deleted"):  # the workspace's run
        promote_stage()
    assert champion_version() == 1
    assert not [tag for tag in run_tags(deleted) if tag.startswith("promotion.")]


def better_run_as_viewer(monkeypatch: pytest.MonkeyPatch) -> str:
    """A champion (version 1), a better run to promote, and the user `viewer` to promote it."""
    finished_run(0.9)
    promote_stage()
    better = finished_run(0.95)
    Path("params.yaml").write_text("{}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "viewer")
    return better


def test_a_refused_tag_write_leaves_the_champion_where_it_was(
    mlflow_workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's reasons are written before the alias moves, so no failure leaves a champion that
    no record explains."""
    from mlflow import MlflowClient

    better = better_run_as_viewer(monkeypatch)
    monkeypatch.setattr(MlflowClient, "log_batch", permission_denied)
    monkeypatch.setattr(MlflowClient, "set_tag", permission_denied)  # were they written one by one
    assert cli_error(["promote", "--run", better], capsys) == (
        f"error: MLflow tracking server {tracking.tracking_uri()} denied permission to tag run "
        f"{better} with the promotion decision (user 'viewer'); it needs EDIT on the run's "
        "experiment; have an admin grant it, or promote as a user who has it (ci); nothing was "
        "changed"
    )
    assert champion_version() == 1


def test_a_refused_alias_move_is_one_line_and_releases_the_lock(
    mlflow_workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from pipeline.registry import registry_lock

    better = better_run_as_viewer(monkeypatch)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", permission_denied)
    err = cli_error(["promote", "--run", better], capsys)
    assert err.startswith(
        f"error: MLflow tracking server {tracking.tracking_uri()} denied permission to move the "
        "champion alias of 'mnist-mlp' to version 2 (user 'viewer'); it needs EDIT on registered "
        "model 'mnist-mlp'; the champion did not move"
    )
    assert champion_version() == 1
    tags = run_tags(better)
    assert "promotion.decision" not in tags and tags["promotion.failed_gates"] == "none"
    assert registry_lock.holder(MlflowClient(), registry_lock.lock_name(NAME)) is None


def test_promote_hides_mlflow_download_progress_bars(
    mlflow_workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its output is its own lines, as predict's is: MLflow draws a bar for each download of the
    champion's and the run's answers."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # restored afterwards
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    finished_run(0.9)
    promote_stage()
    better = finished_run(0.95)
    Path("params.yaml").write_text("{}\n")
    capsys.readouterr()
    assert cli.main(["promote", "--run", better]) == 0
    err = capsys.readouterr().err
    assert "Downloading artifacts" not in err
    (line,) = err.splitlines()
    assert line.startswith("promote: promoted: version 2 vs champion version 1")
