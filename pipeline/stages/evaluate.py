"""Stage `evaluate`: score models/model.pt on the official test set and on the validation split.

The loss is the one the checkpoint was trained with (its "loss" key), computed by the function
train scores its validation with (pipeline/learner/scoring.py), so test_loss and valid_loss compare
directly with the training curves. Beyond accuracy it measures calibration, per-digit accuracy
and robustness (pipeline/quality/measures.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data.datasets import CLASSES, NUM_CLASSES
from pipeline.data.loading import load_dataset, resize
from pipeline.learner.losses import loss_fn
from pipeline.learner.model import (
    Classifier,
    Committee,
    checkpoint_field,
    classifier_from_checkpoint,
    load_checkpoint,
    one_thread,
)
from pipeline.learner.scoring import score
from pipeline.paths import COMMITTEE, RAW_DIR, VALID_INDEX_FILE, Layout
from pipeline.progress import log
from pipeline.quality.measures import (
    calibration_metrics,
    confidence_and_prediction,
    robustness_metrics,
)
from pipeline.registry import lineage, model_card, tracking


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


def member_accuracies(
    committee: Committee,
    test: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
) -> dict[str, float]:
    """`member_<i>_test_accuracy` and `_valid_accuracy` of each member (1-based, in the order of
    committee.seeds), to set beside the committee's own."""
    loss = loss_fn("cross_entropy")
    metrics = {}
    for i, member in enumerate(committee.mlps(), start=1):
        for name, (images, labels) in (("test", test), ("valid", valid)):
            result = score(member, images, labels, loss, batch_size)
            metrics[f"member_{i}_{name}_accuracy"] = result.accuracy
    return metrics


def evaluate(
    model: Classifier,
    loss_name: str,
    test: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
) -> Evaluation:
    """`test` and `valid` hold 28x28 MNIST-form images; they are resized to the model's size here,
    after the perturbations of the robustness metrics, as predict resizes after its framing."""
    size = model.image_size
    loss = loss_fn(loss_name)
    sized_test, sized_valid = (resize(test[0], size), test[1]), (resize(valid[0], size), valid[1])
    tested = score(model, *sized_test, loss, batch_size)
    validated = score(model, *sized_valid, loss, batch_size)
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
    if isinstance(model, Committee):
        metrics.update(member_accuracies(model, sized_test, sized_valid, batch_size))
    predictions = pd.DataFrame(
        {
            "index": np.arange(len(actual)),
            "actual": actual,
            "predicted": predicted_np,
            "confidence": confidence.round(6),
        }
    )
    return Evaluation(metrics, per_class, predictions, confusion)


def write_outputs(result: Evaluation, layout: Layout) -> None:
    artifacts.write_metrics(result.metrics, layout.metrics)
    artifacts.write_per_class(result.per_class, layout.per_class)
    artifacts.write_predictions(result.predictions, layout.predictions)


def log_to_mlflow(
    result: Evaluation,
    checkpoint_epoch: int,
    test: tuple[torch.Tensor, torch.Tensor],
    layout: Layout,
) -> None:
    import mlflow

    with tracking.resume_run(layout.run) as run:
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
        mlflow.log_artifact(str(layout.per_class), "evaluation")
        mlflow.log_artifact(str(layout.metrics), "evaluation")
        # promote pairs the champion's per-image answers with a candidate's (per-digit McNemar).
        mlflow.log_artifact(str(layout.predictions), "evaluation")
        model_card.complete(run.info.run_id, result.metrics, result.per_class)


def main(params: Params, committee: bool = False) -> None:
    """`committee`: score the committee (committee/models/model.pt, `python -m pipeline evaluate
    --committee`) into committee/reports/ instead of the single model."""
    layout = COMMITTEE if committee else Layout()
    tracking.training_run_id(layout.run)  # fail before the work, not after it
    payload = load_checkpoint(layout.model)
    model = classifier_from_checkpoint(payload)
    loss_name = str(checkpoint_field(payload, "loss", layout.model))
    epoch = int(checkpoint_field(payload, "epoch", layout.model))
    data = load_dataset(RAW_DIR, 28)  # MNIST form; evaluate resizes for the model
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, len(data.train_labels)))
    with one_thread():
        result = evaluate(
            model,
            loss_name,
            test=(data.test_images, data.test_labels),
            valid=(data.train_images[valid_idx], data.train_labels[valid_idx]),
            batch_size=params.evaluate.batch_size,
        )
        write_outputs(result, layout)
    m = result.metrics
    log(
        f"test accuracy {m['test_accuracy']:.4f} (loss {m['test_loss']:.4f}), valid accuracy "
        f"{m['valid_accuracy']:.4f} (loss {m['valid_loss']:.4f}), macro-F1 {m['macro_f1']:.4f}, "
        f"ECE {m['test_ece']:.4f}"
    )
    log_to_mlflow(result, epoch, (data.test_images, data.test_labels), layout)
