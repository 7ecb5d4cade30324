"""Stage evaluate on a tiny trained model: outputs, their consistency, the loss kind, MLflow
logging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import artifacts, paths
from pipeline.config import parse_params
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.learner.model import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.stages import evaluate

N_TEST = 200  # tests.helpers.write_dataset default


def test_writes_consistent_outputs(trained_workdir: Path) -> None:
    evaluate.main(parse_params({"evaluate": {"batch_size": 64}}))

    metrics = json.loads(paths.METRICS_FILE.read_text())
    for key in ("test_accuracy", "test_loss", "valid_accuracy", "valid_loss", "macro_f1"):
        assert isinstance(metrics[key], float), key
    predictions = pd.read_csv(paths.PREDICTIONS_FILE)
    assert list(predictions.columns) == ["index", "actual", "predicted", "confidence"]
    assert len(predictions) == N_TEST
    assert predictions["index"].tolist() == list(range(N_TEST))
    assert predictions["confidence"].between(0, 1).all()
    recomputed = (predictions["actual"] == predictions["predicted"]).mean()
    assert metrics["test_accuracy"] == pytest.approx(recomputed, abs=1e-12)
    assert metrics["test_errors"] == int((predictions["actual"] != predictions["predicted"]).sum())
    # Non-trivial model: the fixture's training must have taught it something, but not everything.
    assert 0.3 < metrics["test_accuracy"] < 1.0

    per_class = pd.read_csv(paths.PER_CLASS_FILE)
    assert per_class["class"].tolist() == list(range(10))
    assert per_class["support"].sum() == N_TEST
    assert metrics["macro_f1"] == pytest.approx(per_class["f1"].mean(), abs=1e-6)

    # The validation loss is the training loss on the same split and checkpoint: same function.
    payload = load_checkpoint(paths.MODEL_FILE)
    assert metrics["valid_loss"] == pytest.approx(payload["valid_loss"], rel=1e-5)
    assert metrics["valid_accuracy"] == pytest.approx(payload["valid_accuracy"], abs=1e-6)

    import mlflow

    run_id = artifacts.read_run_reference()["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    # promote pairs the champion's answers with a candidate's; predict reads the reference
    assert "evaluation/predictions.csv" in logged
    assert run.data.metrics["robust_dilate_3x3_accuracy"] == pytest.approx(
        metrics["robust_dilate_3x3_accuracy"]
    )
    confusion_path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="evaluation/confusion_matrix.json"
    )
    counts = np.array(json.loads(Path(confusion_path).read_text())["counts"])
    assert counts.shape == (10, 10) and counts.sum() == N_TEST
    assert np.trace(counts) == N_TEST - metrics["test_errors"]


def test_scores_on_one_torch_thread_then_restores_the_count(
    trained_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads took 4x the CPU time on the shared 2-core machine (pipeline/learner/model.py)."""
    threads: list[int] = []
    score = evaluate.score

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(torch.get_num_threads())
        return score(*args, **kwargs)

    monkeypatch.setattr(evaluate, "score", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate.main(parse_params({}))
        assert threads == [1, 1]  # test and valid
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_calibration_per_digit_and_robustness_metrics(trained_workdir: Path) -> None:
    from pipeline.learner.model import model_outputs
    from pipeline.quality.calibration import expected_calibration_error
    from pipeline.quality.perturb import perturbations, shift

    evaluate.main(parse_params({}))
    metrics = json.loads(paths.METRICS_FILE.read_text())
    predictions = pd.read_csv(paths.PREDICTIONS_FILE)
    correct = (predictions["actual"] == predictions["predicted"]).to_numpy()
    ece = expected_calibration_error(predictions["confidence"].to_numpy(), correct)
    assert metrics["test_ece"] == pytest.approx(ece, abs=1e-5) and metrics["test_ece"] > 0
    per_class = pd.read_csv(paths.PER_CLASS_FILE)
    digits = [metrics[f"test_accuracy_digit_{k}"] for k in range(10)]
    assert digits == pytest.approx(per_class["recall"].tolist(), abs=1e-6)
    # cross-entropy on softmax outputs: the NLL is the test loss
    assert metrics["test_nll"] == pytest.approx(metrics["test_loss"], rel=1e-5)

    robust = {k for k in metrics if k.startswith("robust_")}
    assert robust == {f"robust_{name}_accuracy" for name in perturbations()}
    model = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))
    data = load_dataset(paths.RAW_DIR, 28)
    moved_up = model_outputs(model, shift(data.test_images, -1, 0), 64).argmax(1)
    assert metrics["robust_shift_1px_n_accuracy"] == pytest.approx(
        (moved_up == data.test_labels).double().mean().item()
    )
    assert metrics["robust_noise_sigma_0_2_accuracy"] != metrics["test_accuracy"]


def test_confusion_matrix_counts_every_test_image(trained_workdir: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))
    data = load_dataset(paths.RAW_DIR, 28)
    valid = (data.train_images[:50], data.train_labels[:50])
    result = evaluate.evaluate(
        model, "cross_entropy", (data.test_images, data.test_labels), valid, batch_size=7
    )
    assert result.confusion.sum() == N_TEST
    assert (
        result.confusion.sum(axis=1) == np.bincount(data.test_labels.numpy(), minlength=10)
    ).all()
    # Batching does not change the numbers.
    whole = evaluate.evaluate(
        model, "cross_entropy", (data.test_images, data.test_labels), valid, batch_size=10_000
    )
    assert whole.metrics == pytest.approx(result.metrics)


def _numpy_outputs(payload: dict, images: np.ndarray) -> np.ndarray:
    """An independent forward pass in numpy, straight from the state dict."""
    state = {k: v.double().numpy() for k, v in payload["state_dict"].items()}
    x = (images.reshape(len(images), -1) / 255.0 - payload["preprocess"]["mean"]) / payload[
        "preprocess"
    ]["std"]
    hidden = sorted(
        {k.rsplit(".", 1)[0] for k in state if k.startswith("hidden.")},
        key=lambda k: int(k.split(".")[1]),
    )
    for layer in hidden:
        x = np.maximum(x @ state[f"{layer}.weight"].T + state[f"{layer}.bias"], 0)
    z = x @ state["output.weight"].T + state["output.bias"]
    return 1 / (1 + np.exp(-z)) if payload["arch"]["output_activation"] == "sigmoid" else z


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
def test_loss_follows_checkpoint_with_sigmoid_outputs(
    trained_workdir: Path, loss_name: str
) -> None:
    payload = load_checkpoint(paths.MODEL_FILE)
    payload["arch"]["output_activation"] = "sigmoid"
    model = model_from_checkpoint(payload)
    save_checkpoint(
        paths.MODEL_FILE,
        model,
        {"epoch": 3, "valid_loss": 0.0, "valid_accuracy": 0.0, "loss": loss_name},
    )
    evaluate.main(parse_params({}))

    metrics = json.loads(paths.METRICS_FILE.read_text())
    data = load_dataset(paths.RAW_DIR, 28)
    scores = _numpy_outputs(
        load_checkpoint(paths.MODEL_FILE), data.test_images.numpy().astype(np.float64)
    )
    labels = data.test_labels.numpy()
    if loss_name == "mse":
        expected = np.mean((scores - np.eye(10)[labels]) ** 2)
    else:  # cross-entropy taken on the sigmoid scores, as training does
        log_softmax = scores - np.log(np.exp(scores).sum(1, keepdims=True))
        expected = -log_softmax[np.arange(len(labels)), labels].mean()
    assert metrics["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    confidence = pd.read_csv(paths.PREDICTIONS_FILE)["confidence"].to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()


def test_checkpoint_without_loss_is_refused(trained_workdir: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))
    save_checkpoint(paths.MODEL_FILE, model, {"epoch": 3})
    with pytest.raises(PipelineError, match=r"lacks the 'loss' entry.*rerun the train stage \(dvc"):
        evaluate.main(parse_params({}))
    assert not paths.METRICS_FILE.exists()


def test_unknown_loss_is_refused(trained_workdir: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))
    save_checkpoint(paths.MODEL_FILE, model, {"epoch": 3, "loss": "hinge"})
    with pytest.raises(PipelineError, match="unknown loss 'hinge'"):
        evaluate.main(parse_params({}))


def test_out_of_range_split_is_refused(trained_workdir: Path) -> None:
    artifacts.write_index(paths.VALID_INDEX_FILE, np.array([0, 5, 10**6], dtype=np.int64))
    with pytest.raises(
        PipelineError, match=r"outside 0..599.*rerun the split stage \(dvc repro split\)"
    ):
        evaluate.main(parse_params({}))


def test_run_missing_from_the_store_fails_before_work(
    trained_workdir: Path, migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(migrated_mlflow_db, trained_workdir / "other.db")  # a valid store without the run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_workdir / 'other.db'}")
    with pytest.raises(
        PipelineError, match="is not in the tracking store .*other.db.*MLFLOW_TRACKING_URI"
    ):
        evaluate.main(parse_params({}))
    assert not paths.PREDICTIONS_FILE.exists()


def test_missing_run_reference_fails_before_work(trained_workdir: Path) -> None:
    paths.MLFLOW_RUN_FILE.unlink()
    with pytest.raises(
        PipelineError,
        match=r"mlflow_run.json is missing; run the train stage first \(dvc repro train\)",
    ):
        evaluate.main(parse_params({}))
    assert not paths.PREDICTIONS_FILE.exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_numbers_are_sklearns_bit_for_bit(seed: int) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.8, actual, rng.integers(0, 10, 500))
    predicted[predicted == 3] = 4  # a class never predicted: precision 0, not NaN
    actual[actual == 7] = 8  # a class that never occurs: recall 0
    confusion = evaluate.confusion_counts(actual, predicted)
    assert np.array_equal(confusion, confusion_matrix(actual, predicted, labels=evaluate.CLASSES))
    table = evaluate.per_class_table(confusion)
    expected = precision_recall_fscore_support(
        actual, predicted, labels=evaluate.CLASSES, zero_division=0
    )
    for column, values in zip(("precision", "recall", "f1", "support"), expected, strict=True):
        assert table[column].to_numpy().tobytes() == values.tobytes(), column
