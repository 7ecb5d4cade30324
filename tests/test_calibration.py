"""pipeline/quality/calibration.py and the confidence pipeline/learner/losses.py defines for both
losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.learner.losses import probabilities
from pipeline.quality.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    per_class_accuracy,
    reliability_bins,
)


def test_ece_is_the_count_weighted_gap_per_bin() -> None:
    # Bin (0.6, 0.6667]: 4 predictions at 0.65, 2 right -> gap 0.15;
    # bin (0.9333, 1]: 6 at 0.95, all right -> gap 0.05.
    confidence = np.array([0.65] * 4 + [0.95] * 6)
    correct = np.array([1, 1, 0, 0] + [1] * 6, dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(
        (4 * 0.15 + 6 * 0.05) / 10
    )
    table = reliability_bins(confidence, correct)
    assert len(table) == 15 and sum(b.count for b in table) == 10
    assert [b.count for b in table if b.count] == [4, 6]
    assert table[9].low == pytest.approx(0.6) and table[9].accuracy == 0.5


def test_perfectly_calibrated_predictions_have_zero_ece_and_edges_land_in_range() -> None:
    confidence = np.array([0.0, 1.0, 1.0, 0.5, 0.5])
    correct = np.array([0, 1, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)
    counts = [b.count for b in reliability_bins(confidence, correct)]
    assert counts[0] == 1 and counts[-1] == 2 and counts[7] == 2  # 0.5 is in (0.4667, 0.5333]


def test_nll_and_per_class_accuracy() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    expected = -(math.log(0.5) + math.log(0.9) + math.log(1e-12)) / 3
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected)
    accuracy = per_class_accuracy(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), classes=4)
    assert accuracy == {
        "test_accuracy_digit_0": 0.5,
        "test_accuracy_digit_1": 1.0,
        "test_accuracy_digit_2": 0.0,
    }


def test_mse_confidence_is_the_outputs_normalised_to_sum_one() -> None:
    outputs = torch.tensor([[0.8, 0.2, 0.0] + [0.0] * 7, [1.2, -0.3, 0.3] + [0.0] * 7, [-1.0] * 10])
    probs = probabilities(outputs, "mse")
    assert probs.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert probs[0, :2].tolist() == pytest.approx([0.8, 0.2])
    assert probs[1, :3].tolist() == pytest.approx(
        [1.0 / 1.3, 0.0, 0.3 / 1.3]
    )  # clipped to [0, 1] first
    assert probs[2].tolist() == pytest.approx([0.1] * 10)  # nothing positive: no preference
    logits = torch.randn(4, 10)
    assert probabilities(logits, "cross_entropy").allclose(torch.softmax(logits, 1))
