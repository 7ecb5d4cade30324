"""What evaluate measures beyond accuracy: calibration, per-digit accuracy and robustness.

Shared by the evaluate stage (metrics.json), the report (figures) and the behaviour tests in
tests/model/, so that all three measure the same thing the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.loading import resize
from pipeline.learner.losses import probabilities
from pipeline.learner.model import NUM_CLASSES, Classifier, model_outputs
from pipeline.quality.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    per_class_accuracy,
)
from pipeline.quality.perturb import perturbations


def confidence_and_prediction(
    outputs: torch.Tensor, loss_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class (argmax of the raw outputs, what accuracy counts) and its probability."""
    predicted = outputs.argmax(1)
    confidence = probabilities(outputs, loss_name).gather(1, predicted[:, None])[:, 0]
    return confidence.double().numpy(), predicted.numpy()


def calibration_metrics(
    outputs: torch.Tensor, labels: torch.Tensor, loss_name: str
) -> dict[str, float]:
    """test_ece (15 bins), test_nll and test_accuracy_digit_<k> for a test set's outputs."""
    confidence, predicted = confidence_and_prediction(outputs, loss_name)
    actual = labels.numpy()
    return {
        "test_ece": expected_calibration_error(confidence, predicted == actual),
        "test_nll": negative_log_likelihood(probabilities(outputs, loss_name), labels),
        **per_class_accuracy(actual, predicted, NUM_CLASSES),
    }


def perturbed_predictions(
    model: Classifier, images: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Predicted class per perturbation for uint8 MNIST-form images [N, 28, 28], resized to the
    model's size."""
    size = model.image_size
    return {
        name: model_outputs(model, resize(perturb(images), size), batch_size).argmax(1)
        for name, perturb in perturbations().items()
    }


def robustness_metrics(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """`robust_<name>_accuracy`: test accuracy under each perturbation of
    pipeline/quality/perturb.py."""
    return {
        f"robust_{name}_accuracy": (predicted == labels).double().mean().item()
        for name, predicted in perturbed_predictions(model, images, batch_size).items()
    }


def off_distribution_examples() -> tuple[list[str], torch.Tensor]:
    """Pictures that are not digits, in MNIST form (uint8 [N, 28, 28]), for the report's figure."""
    size = 28
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((rows - 13.5) ** 2 + (cols - 13.5) ** 2) / (2 * 5.0**2)) * 255
    examples = {
        "black": torch.zeros(size, size),
        "white": torch.full((size, size), 255.0),
        "mid-grey": torch.full((size, size), 128.0),
        "uniform noise": torch.randint(0, 256, (size, size), generator=generator).float(),
        "sparse noise": (torch.rand(size, size, generator=generator) < 0.2).float() * 255,
        "stripes": ((cols // 3) % 2).float() * 255,
        "checkerboard": (((rows // 4) + (cols // 4)) % 2).float() * 255,
        "blurred blob": blob,
    }
    return list(examples), torch.stack(list(examples.values())).round().clamp(0, 255).to(
        torch.uint8
    )
