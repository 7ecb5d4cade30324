"""Calibration and per-class metrics: does the confidence a prediction reports match how often
it is right?

Confidence is the top class's probability as pipeline.learner.losses.probabilities reads the outputs
(softmax for cross-entropy models; for MSE models, the clipped outputs normalised to sum 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ECE_BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean confidence of the predictions in the bin (nan when empty)
    accuracy: float  # share of them that are right (nan when empty)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width confidence bins (low, high]; a confidence of exactly 0 goes in the first one."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        mean_conf = float(confidence[inside].mean()) if count else float("nan")
        accuracy = float(correct[inside].mean()) if count else float("nan")
        table.append(
            ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, mean_conf, accuracy)
        )
    return table


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean gap |accuracy - confidence| over equal-width confidence bins."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return 0.0
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table if b.count) / total)


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(true class); probabilities are floored at 1e-12, so a confident miss stays
    finite."""
    picked = probabilities.double().gather(1, labels[:, None])[:, 0]
    return float(-picked.clamp_min(1e-12).log().mean())


def per_class_accuracy(actual: np.ndarray, predicted: np.ndarray, classes: int) -> dict[str, float]:
    """`test_accuracy_digit_<k>`: the share of class k's images predicted as k (flat keys, for
    `dvc metrics diff`).

    A class without images has no key: JSON has no NaN, and no accuracy is not an accuracy of 0.
    """
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    return {
        f"test_accuracy_digit_{k}": float((predicted[actual == k] == k).mean())
        for k in range(classes)
        if (actual == k).any()
    }
