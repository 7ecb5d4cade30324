"""What the MLflow UI shows a user after train and evaluate: datasets, run names and descriptions,
the data checks, system metrics, and a registry that reads as a model card."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline import artifacts, paths
from pipeline.config import parse_params
from pipeline.registry import lineage, model_card, tracking
from tests.helpers import TINY_PIPELINE

# --- run names ------------------------------------------------------------------------------------


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed repository with this project's dvc.yaml, params.yaml, dvc.lock and metrics."""
    source = Path(__file__).resolve().parents[1]
    root = tmp_path / "repo"
    (root / "reports").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        (root / name).write_text((source / name).read_text())
    (root / "reports" / "metrics.json").write_text("{}\n")
    monkeypatch.chdir(root)
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "pipeline")
    return root


def short_sha() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def test_run_name_is_the_experiment_else_the_commit_dirty_only_for_changed_inputs(
    git_repo: Path,
) -> None:
    assert tracking.run_name({"DVC_EXP_NAME": "lucid-lamb"}) == "lucid-lamb"
    assert tracking.run_name({}) == f"repro-{short_sha()}"
    # What a repro of this clean commit rewrites between stages does not make it dirty...
    Path("dvc.lock").write_text(Path("dvc.lock").read_text() + "# rewritten by dvc\n")
    Path("reports/metrics.json").write_text('{"test_accuracy": 0.5}\n')
    Path("scratch.txt").write_text("untracked files do not count, as for git describe --dirty\n")
    assert tracking.run_name({}) == f"repro-{short_sha()}"
    # ...a changed input does, and so does a renamed one.
    Path("params.yaml").write_text(Path("params.yaml").read_text() + "\n")
    assert tracking.run_name({}) == f"repro-{short_sha()}-dirty"
    git("checkout", "params.yaml")
    git("mv", "dvc.yaml", "pipeline.yaml")
    assert tracking.run_name({}) == f"repro-{short_sha()}-dirty"


def test_run_name_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert tracking.run_name({}) == "repro-untracked"


def test_dirty_paths_skip_pipeline_outputs_including_folders() -> None:
    status = "\0".join(
        [
            " M dvc.lock",
            " M reports/figures/x.png",
            "M  pipeline/stages/train.py",
            "R  new.py",
            "old.py",
            " M reports/metrics.json.bak",
            "",
        ]
    )
    written = ["dvc.lock", "reports/figures", "reports/metrics.json"]
    assert tracking.dirty_paths(status, written) == [
        "pipeline/stages/train.py",
        "new.py",
        "reports/metrics.json.bak",
    ]


# --- dataset digests ------------------------------------------------------------------------------


def test_digests_follow_the_data_and_tell_train_from_valid(run_stages) -> None:
    run_stages("download", "stats", "split")
    checksums = artifacts.read_checksums()
    digests = {split: lineage.split_digest(split, checksums, 28) for split in lineage.SPLITS}
    assert len(set(digests.values())) == 3
    assert (
        lineage.split_digest("train", checksums, 28) == digests["train"]
    )  # same data, same digest
    assert lineage.split_digest("train", checksums, 16) != digests["train"]  # other pixels
    valid = np.load(paths.VALID_INDEX_FILE)
    np.save(paths.VALID_INDEX_FILE, valid[::-1].copy())
    assert lineage.split_digest("valid", checksums, 28) != digests["valid"]
    assert lineage.split_digest("train", checksums, 28) == digests["train"]
    assert lineage.split_digest("test", checksums, 28) == digests["test"]
    checksums["files"]["t10k-images-idx3-ubyte.gz"]["md5"] = "0" * 32
    assert lineage.split_digest("test", checksums, 28) != digests["test"]


def test_a_credentialed_source_is_never_a_dataset_source() -> None:
    checksums = {
        "dataset": "mnist",
        "files": {
            "train-images-idx3-ubyte.gz": {
                "md5": "0" * 32,
                "source": "https://alice:s3cr3t@host/m/train-images-idx3-ubyte.gz",
            },
            "t10k-images-idx3-ubyte.gz": {
                "md5": "1" * 32,
                "source": "https://host/m/t10k-images-idx3-ubyte.gz",
            },
        },
    }
    assert lineage.source_of("train", checksums) == "data/raw/train-images-idx3-ubyte.gz"
    assert lineage.source_of("test", checksums) == "https://host/m/t10k-images-idx3-ubyte.gz"


def test_training_on_unvalidated_data_says_so(
    mlflow_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run() as run:
        assert lineage.log_data_validation({"train": 540, "valid": 60}) == lineage.NOT_VALIDATED
    paths.REPORTS_DIR.mkdir()
    paths.DATA_VALIDATION_FILE.write_text(
        json.dumps({"success": True, "counts": {"train": 500, "valid": 100}, "expectations": []})
    )
    with mlflow.start_run() as other:
        assert lineage.log_data_validation({"train": 540, "valid": 60}) == lineage.NOT_VALIDATED
    client = mlflow.MlflowClient()
    for run_id in (run.info.run_id, other.info.run_id):
        assert client.get_run(run_id).data.tags["data_validation.success"] == "not validated"
        assert client.list_artifacts(run_id) == []
    assert "is missing" in capsys.readouterr().err


# --- train and evaluate in MLflow -----------------------------------------------------------------


@pytest.fixture
def evaluated(run_stages, monkeypatch: pytest.MonkeyPatch) -> dict:
    """download .. evaluate on tiny synthetic data, system metrics sampled every 0.2 s."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    params = run_stages("download", "stats", "split", "validate", "train", "evaluate")
    return {"params": params, "run_id": json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"]}


def test_training_run_shows_datasets_checks_system_metrics_and_a_described_version(
    evaluated: dict,
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(evaluated["run_id"])
    checksums = artifacts.read_checksums()
    mirror = Path(checksums["files"]["train-images-idx3-ubyte.gz"]["source"]).parent

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["custom-test", "custom-train", "custom-valid"]
    for split, context in lineage.CONTEXTS.items():
        item = inputs[f"custom-{split}"]
        assert [t.value for t in item.tags if t.key == "mlflow.data.context"] == [context]
        assert item.dataset.digest == lineage.split_digest(split, checksums, 28)
        assert json.loads(item.dataset.source)["uri"].startswith(str(mirror))
    assert json.loads(inputs["custom-valid"].dataset.profile)["features_shape"] == [60, 784]

    assert run.info.run_name == "repro-untracked"  # the test's project is no git checkout
    digest = lineage.data_digest(checksums, 28)
    assert run.data.tags["data_digest"] == digest
    metrics = json.loads(paths.METRICS_FILE.read_text())
    note = run.data.tags["mlflow.note.content"]
    assert f"digest {digest}" in note and f"test accuracy {metrics['test_accuracy']:.4f}" in note
    assert note.startswith(
        "MLP 784-32-10 (relu), trained with adam lr 0.001 (cosine schedule), 2 epochs of batch 64"
    )

    report = json.loads(paths.DATA_VALIDATION_FILE.read_text())
    assert run.data.tags["data_validation.success"] == "true"
    assert (
        run.data.metrics["data_validation.expectations_passed"] == len(report["expectations"]) > 20
    )
    names = {a.path for a in client.list_artifacts(run.info.run_id, "data_validation")}
    assert names == {"data_validation/data_validation.json", "data_validation/data_docs"}
    docs = {a.path for a in client.list_artifacts(run.info.run_id, "data_validation/data_docs")}
    assert "data_validation/data_docs/index.html" in docs

    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert (
        "system/cpu_utilization_percentage" in system
        and "system/system_memory_usage_megabytes" in system
    )

    name = evaluated["params"].mlflow.registered_model
    model = client.get_registered_model(name)
    assert 'Input contract (labelled-answers/1): {"inputs": [row, ...]}' in model.description
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.tags == {
        "test_accuracy": f"{metrics['test_accuracy']:.4f}",
        "valid_accuracy": f"{metrics['valid_accuracy']:.4f}",
        "macro_f1": f"{metrics['macro_f1']:.4f}",
        "data_digest": digest,
        "git_commit": "unknown",
        "dvc_experiment": "none",
        "params_hash": model_card.params_hash(evaluated["params"].flat()),
        "input_shape": "[N, 784]",
    }
    assert version.description == f"Trained by run repro-untracked ({run.info.run_id}). {note}"
    assert {
        a.path for a in client.list_logged_model_artifacts(model_card.logged_model_id(version))
    } >= {"MLmodel", "model_card.md"}
    card = Path(client.download_artifacts(run.info.run_id, "model_card.md")).read_text()
    assert card.startswith(f"# Model card: {name} version {version.version}\n")
    for heading in ("Intended use", "Training data", "Metrics", "Limitations", "Reproduce"):
        assert f"\n## {heading}\n" in card
    per_class = (paths.PER_CLASS_FILE.read_text().splitlines()[4]).split(",")  # class 3
    assert (
        f"| 3 | {float(per_class[1]):.4f} | {float(per_class[2]):.4f} | {float(per_class[3]):.4f} |"
        in card
    )
    assert f"| custom-valid | validation | 60 | `{inputs['custom-valid'].dataset.digest}` |" in card


def test_system_metrics_param_off_logs_none(run_stages, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from pipeline.stages import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run_stages("download", "stats", "split")
    train.main(parse_params({**TINY_PIPELINE, "mlflow": {"system_metrics": False}}))
    run = MlflowClient().get_run(json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"])
    assert run.data.metrics["best_epoch"] >= 1
    assert not [key for key in run.data.metrics if key.startswith("system/")]
    assert run.data.tags["data_validation.success"] == "not validated"
