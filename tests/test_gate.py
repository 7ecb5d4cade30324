"""pipeline/quality/gate.py: every promotion gate, on crafted metrics and crafted per-image
answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.quality.gate import (
    ALLOW_FLAG,
    Evidence,
    Settings,
    compare_classes,
    decide,
    mcnemar_one_sided,
)

SIG_28 = "inputs [Tensor('float32', (-1, 784))] -> outputs [Tensor('float32', (-1, 10))]"
SIG_16 = "inputs [Tensor('float32', (-1, 256))] -> outputs [Tensor('float32', (-1, 10))]"
PER_CLASS = 1000
ACTUAL = np.repeat(np.arange(10), PER_CLASS)


def answers(wrong_per_class: dict[int, list[int]]) -> np.ndarray:
    """Right everywhere except the listed positions inside each class's block of 1,000 images."""
    correct = np.ones(len(ACTUAL), dtype=bool)
    for digit, positions in wrong_per_class.items():
        correct[digit * PER_CLASS + np.asarray(positions, dtype=int)] = False
    return correct


def evidence(
    version: int, accuracy: float, ece: float = 0.003, signature: str = SIG_28
) -> Evidence:
    return Evidence(version, accuracy, ece, signature)


def test_mcnemar_one_sided_exact_values() -> None:
    assert mcnemar_one_sided(0, 0) == 1.0
    assert mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(12, 2) == pytest.approx((math.comb(14, 12) + 14 + 1) / 2**14)
    assert mcnemar_one_sided(0, 9) == 1.0  # only improvements: no evidence of a drop
    assert 0 < mcnemar_one_sided(600, 400) < 1e-9  # large counts stay exact, no overflow


def test_a_significant_drop_on_one_digit_fails_only_that_digit() -> None:
    champion = answers({8: list(range(10))})
    new = answers({8: list(range(22))})  # 12 newly wrong, none newly right: -1.2 points on the 8s
    classes = compare_classes(ACTUAL, champion, new, Settings())
    assert [c.digit for c in classes if c.failed] == [8]
    eight = classes[8]
    assert (eight.newly_wrong, eight.newly_right) == (12, 0)
    assert eight.drop_points == pytest.approx(1.2) and eight.p_value == pytest.approx(0.5**12)
    # Below the 1-point floor, significance alone blocks: 8 newly wrong, none newly right,
    # p = 0.0039.
    small = compare_classes(ACTUAL, champion, answers({8: list(range(18))}), Settings())[8]
    assert (
        small.drop_points == pytest.approx(0.8)
        and small.p_value == pytest.approx(0.5**8)
        and small.failed
    )


def test_churn_without_a_significant_drop_passes_and_the_floor_still_applies() -> None:
    champion = answers({3: list(range(0, 20))})
    new = answers({3: list(range(12, 38))})  # 18 newly wrong, 12 newly right: -0.6 points, p = 0.18
    classes = compare_classes(ACTUAL, champion, new, Settings())
    assert not classes[3].failed and classes[3].p_value == pytest.approx(0.1808, abs=1e-4)
    # The floor: the same churn with a 0.5-point floor blocks it whatever the p-value.
    assert compare_classes(ACTUAL, champion, new, Settings(max_class_drop=0.5))[3].failed


@pytest.mark.parametrize(
    ("new", "settings", "promoted", "gates", "words"),
    [
        (evidence(5, 0.9801), Settings(), True, (), "no digit drops significantly"),
        (
            evidence(5, 0.9800),
            Settings(),
            False,
            ("accuracy",),
            "accuracy: 0.9800 vs 0.9800 (+0.0000); the gain must be more than 0",
        ),
        (
            evidence(5, 0.9805),
            Settings(min_delta=0.001),
            False,
            ("accuracy",),
            "must be at least min_delta 0.001",
        ),
        (
            evidence(5, 0.9811),
            Settings(min_delta=0.001),
            True,
            (),
            "test accuracy 0.9811 vs 0.9800",
        ),
        (
            evidence(5, 0.9900, ece=0.0131),
            Settings(),
            False,
            ("calibration",),
            "calibration: test ECE 0.0131 vs 0.0030 (+0.0101); it may rise by at most 0.01",
        ),
        (
            evidence(5, 0.9900, ece=0.0127),
            Settings(),
            True,
            (),
            "test ECE 0.0127 vs 0.0030",
        ),  # challenger-like +0.0097
        (evidence(5, 0.9900, signature=SIG_16), Settings(), False, ("contract",), ALLOW_FLAG),
        (
            evidence(5, 0.9900, signature=SIG_16),
            Settings(allow_contract_change=True),
            True,
            (),
            "the serving contract changes, as allowed by --allow-contract-change",
        ),
        (  # the same weights under a new contract: no worse is enough
            evidence(5, 0.9800, signature=SIG_16),
            Settings(allow_contract_change=True),
            True,
            (),
            "the serving contract changes, as allowed by --allow-contract-change",
        ),
        (
            evidence(5, 0.9799, signature=SIG_16),
            Settings(allow_contract_change=True),
            False,
            ("accuracy",),
            "accuracy: 0.9799 vs 0.9800 (-0.0001); the gain must be more than 0",
        ),
        (evidence(5, 0.9800), Settings(), False, ("accuracy",), "the gain must be more than 0"),
        (evidence(4, 0.9900), Settings(), False, (), "version 4 is already the champion"),
    ],
)
def test_decide_on_crafted_metrics(
    new: Evidence, settings: Settings, promoted: bool, gates: tuple, words: str
) -> None:
    same = compare_classes(ACTUAL, answers({}), answers({}), settings)
    verdict = decide(new, evidence(4, 0.98), same, settings)
    assert verdict.promote is promoted and verdict.failed_gates == gates
    assert words in verdict.reason


def test_the_contract_reason_names_both_signatures_and_skips_the_other_gates() -> None:
    verdict = decide(evidence(5, 0.5, ece=0.9, signature=SIG_16), evidence(4, 0.98), [], Settings())
    assert verdict.failed_gates == ("contract",)
    assert (
        f"version 5 has signature [{SIG_16}] but champion version 4 serves [{SIG_28}]"
        in verdict.reason
    )


def test_every_failed_gate_is_named_with_its_numbers() -> None:
    champion, new = answers({}), answers({8: list(range(30))})
    classes = compare_classes(ACTUAL, champion, new, Settings())
    verdict = decide(evidence(5, 0.97, ece=0.05), evidence(4, 0.98), classes, Settings())
    assert verdict.failed_gates == ("accuracy", "class_drop", "calibration")
    assert (
        "digit 8 1.0000 -> 0.9700 (-3.00 points, 30 newly wrong vs 0 newly right, "
        "McNemar p=9.3e-10)" in verdict.reason
    )


def test_unpaired_answers_are_refused() -> None:
    with pytest.raises(ValueError, match="unpaired answers"):
        compare_classes(ACTUAL, answers({}), answers({})[:-1], Settings())
