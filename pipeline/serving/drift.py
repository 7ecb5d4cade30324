"""Has what the champion is asked changed? Four two-sample tests of a window of records against the
reference train stores with the model, combined into one verdict.

The reference is the validation split as the served model answers it: held out from training,
so a window of new, ordinary digits looks like it. Each test asks one question:
- class priors: do the predicted digits come in other proportions? (chi-square on the 2 x 10
  table of reference and window counts, so the reference's own sampling noise is counted);
- confidence: is the top probability distributed differently? (two-sample Kolmogorov-Smirnov);
- off-distribution rate: are more rows flagged than the design rate? (one-sided binomial test
  against 1 - the reference quantile, 0.1%);
- features: do the last hidden layer's activations come from another distribution? (maximum
  mean discrepancy with a Gaussian kernel, p-value by permutation).
MMD with a permutation test was chosen over a domain classifier or Evidently because its p-value
is exact at any window size with no model to fit, so it can enter a multiple-testing correction
like the others, and it needs no new dependency. Holm's correction combines the four: the verdict
is "drift" when any corrected p-value is below alpha, so clean windows alarm at most alpha of the
time (docs/monitoring.md measures it).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import PipelineError

TESTS = ("class_priors", "confidence", "ood_rate", "features")
MMD_REFERENCE_ROWS = 1000  # reference rows the feature test compares a window with
# The feature test's permutations: at least this many, and enough that its smallest p-value,
# 1 / (permutations + 1), is half the strictest threshold Holm's correction can set
PERMUTATIONS = 500
SEED = 0  # the draws of the feature test, so the same window always gets the same verdict


@dataclass(frozen=True)
class Reference:
    """The validation split as the served model answers it; stored with the model."""

    digits: np.ndarray  # int64 [N] predicted digits
    confidences: np.ndarray  # float32 [N] top probabilities, rounded as the service answers
    features: np.ndarray  # float32 [N, F] feature vectors (pipeline/serving/service.py)
    ood_rate: float  # the share of rows the off-distribution check is designed to flag
    bandwidth: float  # the Gaussian kernel's width: the median distance between reference rows

    def save(self, path: Path) -> None:
        """An .npz file; nothing pickled, so it loads with allow_pickle=False."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            digits=self.digits,
            confidences=self.confidences,
            features=self.features,
            ood_rate=np.float64(self.ood_rate),
            bandwidth=np.float64(self.bandwidth),
        )
        atomic.write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    data["digits"],
                    data["confidences"],
                    data["features"],
                    float(data["ood_rate"]),
                    float(data["bandwidth"]),
                )
        except FileNotFoundError:
            raise PipelineError(
                f"no monitoring reference at {path}; retrain (dvc repro train) so the model has one"
            ) from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise PipelineError(
                f"{path} is not a monitoring reference ({exc}); retrain (dvc repro train)"
            ) from None


def build_reference(
    probabilities: np.ndarray, features: np.ndarray, ood_quantile: float
) -> Reference:
    """The reference of the validation split's answers: probabilities [N, 10] and features."""
    digits = probabilities.argmax(1)
    confidences = probabilities[np.arange(len(digits)), digits].astype(np.float64).round(6)
    features = features.astype(np.float32)
    sample = features[_reference_rows(len(features))]
    distances = np.sqrt(np.maximum(_squared_distances(sample, sample), 0))
    bandwidth = float(np.median(distances[np.triu_indices(len(sample), 1)]))
    return Reference(
        digits.astype(np.int64),
        confidences.astype(np.float32),
        features,
        1 - ood_quantile,
        max(bandwidth, 1e-6),
    )


@dataclass(frozen=True)
class Window:
    """What the records of one model hold, row for row."""

    digits: np.ndarray  # int [n]
    confidences: np.ndarray  # float [n]
    ood: np.ndarray  # bool [n]
    features: np.ndarray  # float32 [n, F]

    def __len__(self) -> int:
        return len(self.digits)


@dataclass(frozen=True)
class TestResult:
    name: str
    statistic: float
    p_value: float
    adjusted_p: float  # Holm's, over every test of the verdict
    drift: bool


@dataclass(frozen=True)
class Shift:
    """The numbers a person reads beside the p-values."""

    window_priors: list[float]
    reference_priors: list[float]
    window_mean_confidence: float
    reference_mean_confidence: float
    ood_rate: float
    design_ood_rate: float
    mmd2: float
    mmd2_null_95: float  # the 95% point of the permutation distribution


def class_priors_test(window: Window, reference: Reference) -> tuple[float, float]:
    from scipy.stats import chi2_contingency

    table = np.stack(
        [np.bincount(reference.digits, minlength=10), np.bincount(window.digits, minlength=10)]
    )
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def confidence_test(window: Window, reference: Reference) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    result = ks_2samp(window.confidences, reference.confidences)
    return float(result.statistic), float(result.pvalue)


def ood_rate_test(window: Window, reference: Reference) -> tuple[float, float]:
    from scipy.stats import binomtest

    flagged = int(window.ood.sum())
    p = binomtest(flagged, len(window), reference.ood_rate, alternative="greater").pvalue
    return flagged / len(window), float(p)


def _reference_rows(count: int) -> np.ndarray:
    """A fixed subset of the reference rows: the feature test's cost grows with its square."""
    if count <= MMD_REFERENCE_ROWS:
        return np.arange(count)
    return np.sort(np.random.default_rng(SEED).choice(count, MMD_REFERENCE_ROWS, replace=False))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64**2).sum(1)[:, None] + (b64**2).sum(1)[None, :] - 2 * a64 @ b64.T


def permutations_for(tests: int, alpha: float) -> int:
    return max(PERMUTATIONS, math.ceil(2 * tests / alpha))


def mmd_test(
    window: Window, reference: Reference, permutations: int = PERMUTATIONS
) -> tuple[float, float, np.ndarray]:
    """(MMD^2, permutation p-value, the permutation statistics). Every permutation's MMD^2 is
    a quadratic form of one kernel matrix, so all of them cost a few matrix products."""
    pooled = np.concatenate(
        [
            reference.features[_reference_rows(len(reference.features))],
            window.features.astype(np.float32),
        ]
    )
    m = len(pooled) - len(window)
    kernel = np.exp(-_squared_distances(pooled, pooled) / (2 * reference.bandwidth**2))
    rng = np.random.default_rng(SEED)
    labels = np.zeros((len(pooled), permutations + 1), dtype=bool)
    labels[m:, 0] = True
    for column in range(1, permutations + 1):
        labels[rng.choice(len(pooled), len(window), replace=False), column] = True
    weights = np.where(labels, 1 / len(window), -1 / m)
    statistics = ((kernel @ weights) * weights).sum(0)
    observed, null = float(statistics[0]), statistics[1:]
    return observed, float((1 + (null >= observed).sum()) / (1 + permutations)), null


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Judgement:
    results: list[TestResult]
    shift: Shift
    null: np.ndarray  # the feature test's permutation statistics, for the figure

    @property
    def drift(self) -> bool:
        return any(result.drift for result in self.results)


def raw_tests(
    window: Window, reference: Reference, permutations: int = PERMUTATIONS
) -> tuple[dict[str, tuple[float, float]], np.ndarray]:
    """Each test's (statistic, uncorrected p-value), and the permutation null."""
    if len(window) == 0:
        raise PipelineError("the window holds no records; widen it (--days or --last)")
    if window.features.shape[1] != reference.features.shape[1]:
        raise PipelineError(
            f"the records hold {window.features.shape[1]} features but the reference "
            f"{reference.features.shape[1]}: they are of different models; monitor each model's "
            "records against its own reference"
        )
    mmd2, mmd_p, null = mmd_test(window, reference, permutations)
    return {
        "class_priors": class_priors_test(window, reference),
        "confidence": confidence_test(window, reference),
        "ood_rate": ood_rate_test(window, reference),
        "features": (mmd2, mmd_p),
    }, null


def judge(windows: list[tuple[Window, Reference]], alpha: float) -> list[Judgement]:
    """One Judgement per (window, reference); Holm's correction runs over every test of every
    window, so the verdict over all of them together alarms at most alpha of the time."""
    permutations = permutations_for(len(TESTS) * len(windows), alpha)
    raw = [raw_tests(window, reference, permutations) for window, reference in windows]
    adjusted = iter(holm([p for tests, _ in raw for _, p in tests.values()]))
    judgements = []
    for (window, reference), (tests, null) in zip(windows, raw, strict=True):
        results = []
        for name, (statistic, p) in tests.items():
            q = next(adjusted)
            results.append(TestResult(name, statistic, p, q, q < alpha))
        judgements.append(Judgement(results, shift(window, reference, tests, null), null))
    return judgements


def shift(
    window: Window,
    reference: Reference,
    tests: dict[str, tuple[float, float]],
    null: np.ndarray,
) -> Shift:
    def priors(digits: np.ndarray) -> list[float]:
        return (np.bincount(digits, minlength=10) / max(len(digits), 1)).round(4).tolist()

    return Shift(
        priors(window.digits),
        priors(reference.digits),
        round(float(window.confidences.mean()), 6),
        round(float(reference.confidences.mean()), 6),
        round(float(window.ood.mean()), 6),
        reference.ood_rate,
        tests["features"][0],
        float(np.quantile(null, 0.95)),
    )
