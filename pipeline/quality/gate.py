"""The promotion gate as pure functions: may a new version replace the champion?

Order and meaning (docs: promotion gate):
1. contract: the new version's MLflow input and output signatures equal the champion's, or the
   change is allowed explicitly (`python -m pipeline promote --allow-contract-change`); a client
   of `@champion` must never start getting HTTP 400 because the alias moved.
2. accuracy: test accuracy beats the champion's by more than nothing and by at least min_delta.
   A deliberate contract change only needs to be no worse: it changes how clients call the model,
   so the same weights under the new contract must be able to take over.
3. class_drop: no digit loses accuracy significantly. Per class, McNemar's exact test on the two
   versions' right/wrong answers on that class's test images, one-sided (is the new one worse?),
   at class_drop_p; and no class may lose more than max_class_drop points whatever the p-value.
4. calibration: test ECE rises by at most max_ece_increase.
Gates 2-4 are all evaluated, so the reason names every one that failed, with its numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Accuracies are ratios of counts; this only absorbs float rounding in `new - old >= min_delta`.
_EPSILON = 1e-12
ALLOW_FLAG = "python -m pipeline promote --allow-contract-change"


@dataclass(frozen=True)
class Settings:
    min_delta: float = 0.0
    class_drop_p: float = 0.01
    max_class_drop: float = 1.0  # accuracy points
    max_ece_increase: float = 0.01
    allow_contract_change: bool = False


@dataclass(frozen=True)
class Evidence:
    """One version's numbers from its MLflow run (the per-image answers go to compare_classes)."""

    version: int
    accuracy: float
    ece: float
    signature: str  # "inputs: ... outputs: ..." as MLflow records them


@dataclass(frozen=True)
class ClassComparison:
    digit: int
    champion_accuracy: float
    new_accuracy: float
    newly_wrong: int  # test images of this digit the champion gets right and the new version wrong
    newly_right: int
    p_value: (
        float  # one-sided exact McNemar: chance of >= newly_wrong of the discordant pairs if equal
    )
    failed: bool

    @property
    def drop_points(self) -> float:
        return (self.champion_accuracy - self.new_accuracy) * 100


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    failed_gates: tuple[str, ...] = ()
    classes: tuple[ClassComparison, ...] = field(default=())


def mcnemar_one_sided(newly_wrong: int, newly_right: int) -> float:
    """P(X >= newly_wrong) for X ~ Binomial(newly_wrong + newly_right, 1/2), exactly (integer
    arithmetic)."""
    n = newly_wrong + newly_right
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(newly_wrong, n + 1)) / 2**n  # int / int rounds once


def compare_classes(
    actual: np.ndarray, champion_correct: np.ndarray, new_correct: np.ndarray, settings: Settings
) -> list[ClassComparison]:
    """Per digit present in `actual`: paired accuracy change, its one-sided p-value, and whether
    it fails."""
    actual = np.asarray(actual)
    champion_correct, new_correct = (
        np.asarray(champion_correct, bool),
        np.asarray(new_correct, bool),
    )
    if not (len(actual) == len(champion_correct) == len(new_correct)):
        raise ValueError(
            f"unpaired answers: {len(actual)} labels, {len(champion_correct)} and "
            f"{len(new_correct)}"
        )
    out = []
    for digit in np.unique(actual).tolist():
        mask = actual == digit
        old, new = champion_correct[mask], new_correct[mask]
        newly_wrong, newly_right = int((old & ~new).sum()), int((~old & new).sum())
        comparison = ClassComparison(
            int(digit),
            float(old.mean()),
            float(new.mean()),
            newly_wrong,
            newly_right,
            mcnemar_one_sided(newly_wrong, newly_right),
            False,
        )
        failed = (
            comparison.p_value < settings.class_drop_p
            or comparison.drop_points > settings.max_class_drop + 1e-9
        )
        out.append(ClassComparison(**{**comparison.__dict__, "failed": bool(failed)}))
    return out


def contract_failure(new: Evidence, champion: Evidence, settings: Settings) -> str | None:
    if new.signature == champion.signature or settings.allow_contract_change:
        return None
    return (
        f"contract: version {new.version} has signature [{new.signature}] but champion version "
        f"{champion.version} serves [{champion.signature}]; promoting it would break every client "
        f"of the champion. Promote it deliberately with `{ALLOW_FLAG}` once clients are ready "
        "(docs/serving.md says what they change)"
    )


def accuracy_failure(new: Evidence, champion: Evidence, settings: Settings) -> str | None:
    gain = new.accuracy - champion.accuracy
    if gain > _EPSILON and gain >= settings.min_delta - _EPSILON:
        return None
    if new.signature != champion.signature and gain >= -_EPSILON:
        return None  # contract_failure has let the change through, so it is deliberate
    needed = (
        "more than 0" if settings.min_delta == 0 else f"at least min_delta {settings.min_delta}"
    )
    return (
        f"accuracy: {new.accuracy:.4f} vs {champion.accuracy:.4f} ({gain:+.4f}); "
        f"the gain must be {needed}"
    )


def class_failure(classes: list[ClassComparison], settings: Settings) -> str | None:
    failed = [c for c in classes if c.failed]
    if not failed:
        return None
    parts = [
        f"digit {c.digit} {c.champion_accuracy:.4f} -> {c.new_accuracy:.4f} "
        f"({-c.drop_points:+.2f} points, "
        f"{c.newly_wrong} newly wrong vs {c.newly_right} newly right, McNemar p={c.p_value:.2g})"
        for c in failed
    ]
    return (
        f"class_drop: {'; '.join(parts)}; a class may not drop significantly "
        f"(p < {settings.class_drop_p}) "
        f"nor by more than {settings.max_class_drop} points"
    )


def calibration_failure(new: Evidence, champion: Evidence, settings: Settings) -> str | None:
    rise = new.ece - champion.ece
    if rise <= settings.max_ece_increase + _EPSILON:
        return None
    return (
        f"calibration: test ECE {new.ece:.4f} vs {champion.ece:.4f} ({rise:+.4f}); "
        "it may rise by at most "
        f"{settings.max_ece_increase}"
    )


def decide(
    new: Evidence, champion: Evidence, classes: list[ClassComparison], settings: Settings
) -> Verdict:
    """Contract first (nothing else matters if clients would break), then every quality gate."""
    versus = f"version {new.version} vs champion version {champion.version}"
    if new.version == champion.version:
        return Verdict(False, f"version {new.version} is already the champion")
    contract = contract_failure(new, champion, settings)
    if contract:
        return Verdict(False, f"{versus}: {contract}", ("contract",), tuple(classes))
    failures = {
        "accuracy": accuracy_failure(new, champion, settings),
        "class_drop": class_failure(classes, settings),
        "calibration": calibration_failure(new, champion, settings),
    }
    failed = {name: text for name, text in failures.items() if text}
    if failed:
        return Verdict(
            False,
            f"{versus} kept out by {' | '.join(failed.values())}",
            tuple(failed),
            tuple(classes),
        )
    worst = min(classes, key=lambda c: c.p_value, default=None)
    passed = (
        f"{versus}: test accuracy {new.accuracy:.4f} vs {champion.accuracy:.4f} "
        f"({new.accuracy - champion.accuracy:+.4f}), no digit drops significantly"
        + (f" (smallest McNemar p={worst.p_value:.2g}, digit {worst.digit})" if worst else "")
        + f", test ECE {new.ece:.4f} vs {champion.ece:.4f}"
    )
    if new.signature != champion.signature:
        passed += "; the serving contract changes, as allowed by --allow-contract-change"
    return Verdict(True, passed, (), tuple(classes))
