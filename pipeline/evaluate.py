"""Stage `evaluate`: score models/model.pt on the official test set and on the validation split.

The loss is the one the checkpoint was trained with (its "loss" key), computed by the function
train scores its validation with (pipeline/scoring.py), so test_loss and valid_loss compare
directly with the training curves. Beyond accuracy it measures calibration, per-digit accuracy
and robustness (pipeline/quality.py), and fits the off-distribution reference that predict
checks inputs against (pipeline/ood.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import artifacts, lineage, model_card, ood, tracking
from pipeline.config import Params
from pipeline.data import load_dataset, resize
from pipeline.datasets import CLASSES, NUM_CLASSES
from pipeline.losses import loss_fn
from pipeline.model import MLP, checkpoint_field, load_checkpoint, model_from_checkpoint
from pipeline.paths import (
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    MODEL_FILE,
    OOD_REFERENCE_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
    RAW_DIR,
    TRAIN_INDEX_FILE,
    VALID_INDEX_FILE,
)
from pipeline.progress import log
from pipeline.quality import calibration_metrics, confidence_and_prediction, robustness_metrics
from pipeline.scoring import score


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    per_class: pd.DataFrame  # class, precision, recall, f1, support
    predictions: pd.DataFrame  # index, actual, predicted, confidence (test set)
    confusion: np.ndarray  # [actual, predicted] counts on the test set


def confusion_counts(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[actual, predicted] counts over CLASSES. numpy, not sklearn: importing sklearn.metrics alone
    takes seconds, several times this stage's work."""
    n = NUM_CLASSES
    inside = (actual >= 0) & (actual < n) & (predicted >= 0) & (predicted < n)
    return np.bincount(
        actual[inside].astype(np.int64) * n + predicted[inside], minlength=n * n
    ).reshape(n, n)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float64, 0 where denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator != 0)


def per_class_table(confusion: np.ndarray) -> pd.DataFrame:
    """Precision, recall and F1 per class with sklearn's arithmetic (F1 = 2 tp / (support +
    predicted)), so the numbers are bit for bit those of precision_recall_fscore_support."""
    tp, predicted, support = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    return pd.DataFrame(
        {
            "class": CLASSES,
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1": _ratio(2.0 * tp, (support + predicted).astype(np.float64)),
            "support": support,
        }
    )


def evaluate(
    model: MLP,
    loss_name: str,
    test: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
) -> Evaluation:
    """`test` and `valid` hold 28x28 MNIST-form images; they are resized to the model's size here,
    after the perturbations of the robustness metrics, as predict resizes after its framing."""
    size = model.arch.image_size
    loss = loss_fn(loss_name)
    tested = score(model, resize(test[0], size), test[1], loss, batch_size)
    validated = score(model, resize(valid[0], size), valid[1], loss, batch_size)
    confidence, predicted_np = confidence_and_prediction(tested.outputs, loss_name)
    actual = test[1].numpy()
    confusion = confusion_counts(actual, predicted_np)
    per_class = per_class_table(confusion)
    metrics = {
        "test_accuracy": tested.accuracy,
        "test_loss": tested.loss,
        "test_errors": int((predicted_np != actual).sum()),
        "valid_accuracy": validated.accuracy,
        "valid_loss": validated.loss,
        "macro_precision": float(per_class["precision"].mean()),
        "macro_recall": float(per_class["recall"].mean()),
        "macro_f1": float(per_class["f1"].mean()),
        **calibration_metrics(tested.outputs, test[1], loss_name),
        **robustness_metrics(model, test[0], test[1], batch_size),
    }
    predictions = pd.DataFrame(
        {
            "index": np.arange(len(actual)),
            "actual": actual,
            "predicted": predicted_np,
            "confidence": confidence.round(6),
        }
    )
    return Evaluation(metrics, per_class, predictions, confusion)


def write_outputs(result: Evaluation) -> None:
    artifacts.write_metrics(result.metrics)
    artifacts.write_per_class(result.per_class)
    artifacts.write_predictions(result.predictions)


def log_to_mlflow(
    result: Evaluation, checkpoint_epoch: int, test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    import mlflow

    with tracking.resume_run(MLFLOW_RUN_FILE) as run:
        checksums = artifacts.read_checksums()
        lineage.log_split("test", test[0].numpy(), test[1].numpy(), checksums, test[0].shape[-1])
        # At the checkpoint's epoch, so valid_* lines up with the per-epoch values train logged.
        mlflow.log_metrics(result.metrics, step=checkpoint_epoch)
        mlflow.log_dict(
            {
                "labels": CLASSES,
                "rows": "actual",
                "columns": "predicted",
                "counts": result.confusion.tolist(),
            },
            "evaluation/confusion_matrix.json",
        )
        mlflow.log_artifact(str(PER_CLASS_FILE), "evaluation")
        mlflow.log_artifact(str(METRICS_FILE), "evaluation")
        # promote pairs the champion's per-image answers with a candidate's (per-digit McNemar
        # test), and predict checks inputs against the model's off-distribution reference.
        mlflow.log_artifact(str(PREDICTIONS_FILE), "evaluation")
        mlflow.log_artifact(str(OOD_REFERENCE_FILE), "evaluation")
        model_card.complete(run.info.run_id, result.metrics, result.per_class)


def main(params: Params) -> None:
    tracking.training_run_id(MLFLOW_RUN_FILE)  # fail before the work, not after it
    payload = load_checkpoint(MODEL_FILE)
    model = model_from_checkpoint(payload)
    loss_name = str(checkpoint_field(payload, "loss", MODEL_FILE))
    epoch = int(checkpoint_field(payload, "epoch", MODEL_FILE))
    data = load_dataset(RAW_DIR, 28)  # MNIST form; evaluate resizes for the model
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, len(data.train_labels)))
    train_idx = torch.from_numpy(artifacts.read_index(TRAIN_INDEX_FILE, len(data.train_labels)))
    result = evaluate(
        model,
        loss_name,
        test=(data.test_images, data.test_labels),
        valid=(data.train_images[valid_idx], data.train_labels[valid_idx]),
        batch_size=params.evaluate.batch_size,
    )
    write_outputs(result)
    reference = ood.fit_reference(data.train_images[train_idx], data.train_images[valid_idx])
    artifacts.write_ood_reference(reference.to_dict())
    m = result.metrics
    log(
        f"test accuracy {m['test_accuracy']:.4f} (loss {m['test_loss']:.4f}), valid accuracy "
        f"{m['valid_accuracy']:.4f} (loss {m['valid_loss']:.4f}), macro-F1 {m['macro_f1']:.4f}, "
        f"ECE {m['test_ece']:.4f}; off-distribution threshold {reference.threshold:.2f}"
    )
    log_to_mlflow(result, epoch, (data.test_images, data.test_labels))
