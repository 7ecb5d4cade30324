"""pipeline/serving/drift.py: each test sees the shift it is for, the combined verdict keeps its
false alarm rate, and the reference the served model carries loads without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.serving import drift


def answers(n: int, seed: int, shift: float = 0.0, priors: np.ndarray | None = None):
    """Synthetic answers: probabilities [n, 10] whose digit follows `priors`, and features whose
    mean moves with `shift`."""
    rng = np.random.default_rng(seed)
    digits = rng.choice(10, n, p=priors if priors is not None else np.full(10, 0.1))
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), digits] += 6
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    features = np.maximum(rng.normal(0, 1, (n, 20)) + np.eye(10, 20)[digits] * 3 + shift, 0)
    return probabilities.astype(np.float32), features.astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> drift.Reference:
    probabilities, features = answers(3000, seed=0)
    return drift.build_reference(probabilities, features, ood_quantile=0.999)


def window(n: int, seed: int, shift: float = 0.0, priors=None, ood_share: float = 0.0):
    probabilities, features = answers(n, seed, shift, priors)
    digits = probabilities.argmax(1)
    ood = np.random.default_rng(seed + 1).random(n) < ood_share
    return drift.Window(
        digits, probabilities[np.arange(n), digits].round(6), ood, features.astype(np.float32)
    )


def verdict(w: drift.Window, reference: drift.Reference, alpha: float = 0.01) -> drift.Judgement:
    return drift.judge([(w, reference)], alpha)[0]


def flagged(judgement: drift.Judgement) -> set[str]:
    return {r.name for r in judgement.results if r.drift}


def test_ordinary_windows_rarely_alarm(reference: drift.Reference) -> None:
    alarms = [verdict(window(300, seed), reference).drift for seed in range(100, 130)]
    assert sum(alarms) <= 1


def test_moved_features_are_seen_by_the_feature_test(reference: drift.Reference) -> None:
    judgement = verdict(window(300, 1, shift=0.5), reference)
    assert judgement.drift and "features" in flagged(judgement)
    assert judgement.shift.mmd2 > judgement.shift.mmd2_null_95


def test_other_class_proportions_are_seen_by_the_prior_test(reference: drift.Reference) -> None:
    mostly_ones = np.full(10, 0.05)
    mostly_ones[1] = 0.55
    assert "class_priors" in flagged(verdict(window(300, 2, priors=mostly_ones), reference))


def test_more_flagged_inputs_than_designed_are_seen(reference: drift.Reference) -> None:
    judgement = verdict(window(300, 3, ood_share=0.05), reference)
    assert flagged(judgement) == {"ood_rate"} and judgement.shift.ood_rate > 0.01


def test_less_sure_answers_are_seen_by_the_confidence_test(reference: drift.Reference) -> None:
    unsure = window(300, 4)
    unsure = drift.Window(unsure.digits, unsure.confidences * 0.8, unsure.ood, unsure.features)
    assert "confidence" in flagged(verdict(unsure, reference))


def test_holm_adjusts_step_down() -> None:
    assert drift.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_holm_runs_over_every_test_of_every_window(reference: drift.Reference) -> None:
    """Two windows: eight tests, so the smallest p-value is multiplied by 8, not 4."""
    judgements = drift.judge([(window(300, 5, shift=0.5), reference)] * 2, 0.01)
    smallest = min(r.p_value for j in judgements for r in j.results)
    assert min(r.adjusted_p for j in judgements for r in j.results) == pytest.approx(8 * smallest)


def test_the_same_window_gets_the_same_verdict(reference: drift.Reference) -> None:
    w = window(200, 6, shift=0.1)
    assert verdict(w, reference).results == verdict(w, reference).results


def test_records_of_another_model_are_refused(reference: drift.Reference) -> None:
    other = window(100, 7)
    other = drift.Window(other.digits, other.confidences, other.ood, other.features[:, :5])
    with pytest.raises(PipelineError, match="different models"):
        verdict(other, reference)


def test_an_empty_window_is_refused(reference: drift.Reference) -> None:
    empty = drift.Window(np.zeros(0, int), np.zeros(0), np.zeros(0, bool), np.zeros((0, 20)))
    with pytest.raises(PipelineError, match="no records"):
        verdict(empty, reference)


def test_the_reference_round_trips_without_pickle(
    reference: drift.Reference, tmp_path: Path
) -> None:
    reference.save(tmp_path / "reference.npz")
    loaded = drift.Reference.load(tmp_path / "reference.npz")
    assert np.array_equal(loaded.features, reference.features)
    assert (loaded.ood_rate, loaded.bandwidth) == (reference.ood_rate, reference.bandwidth)
    assert loaded.ood_rate == pytest.approx(0.001)


@pytest.mark.parametrize("content", [None, b"not an npz", b"PK\x03\x04 broken"])
def test_a_missing_or_broken_reference_is_one_line(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "reference.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError) as caught:
        drift.Reference.load(path)
    assert "\n" not in str(caught.value) and "dvc repro train" in str(caught.value)
