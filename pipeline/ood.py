"""Off-distribution check: is a picture's pixel make-up far from that of the training digits?

An MLP answers every input with some class, often with high confidence (uniform noise gets
>= 0.99), so `predict` flags inputs whose pixel statistics lie far outside the training set's.
Four statistics per image, each standardised by the training split's mean and std:
- brightness: mean pixel, on a log scale (a black picture is far below every digit);
- ink: share of pixels above half brightness, log scale;
- mid-grey: share of pixels strictly between 0.1 and 0.9 (noise and grey photos have many);
- border: mean pixel of the 3-pixel frame (MNIST digits sit in a dark frame).
The score is the largest |z| of the four. The threshold is a high quantile of the validation
split's scores (THRESHOLD_QUANTILE), so about that share of real, held-out digits is flagged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError

FEATURES = ("brightness", "ink", "mid_grey", "border")
LOG_FEATURES = ("brightness", "ink")
THRESHOLD_QUANTILE = 0.999  # flags about 0.1% of real digits from the validation split
BORDER = 3
LOG_FLOOR = (
    1e-3  # added before the log: below one pixel's share of a 28x28 image, so 0 stays finite
)


def pixel_features(images: torch.Tensor) -> np.ndarray:
    """uint8 images [N, H, W] -> float64 [N, 4] in FEATURES order (log features already logged)."""
    pixels = images.double().div(255).flatten(1)
    n, size = images.shape[0], images.shape[-1]
    frame = torch.ones(images.shape[-2:], dtype=torch.bool)
    frame[BORDER : images.shape[-2] - BORDER, BORDER : size - BORDER] = False
    columns = {
        "brightness": pixels.mean(1),
        "ink": (pixels > 0.5).double().mean(1),
        "mid_grey": ((pixels > 0.1) & (pixels < 0.9)).double().mean(1),
        "border": pixels[:, frame.flatten()].mean(1)
        if frame.any()
        else torch.zeros(n, dtype=torch.float64),
    }
    for name in LOG_FEATURES:
        columns[name] = (columns[name] + LOG_FLOOR).log()
    return torch.stack([columns[name] for name in FEATURES], 1).numpy()


@dataclass(frozen=True)
class OodReference:
    mean: tuple[float, ...]  # per feature, on the training split
    std: tuple[float, ...]
    threshold: float  # scores above it are flagged
    quantile: float  # which quantile of the validation scores the threshold is

    def to_dict(self) -> dict:
        return {
            "features": list(FEATURES),
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict) -> OodReference:
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"features {data.get('features')} are not {list(FEATURES)}")
        return cls(
            tuple(map(float, data["mean"])),
            tuple(map(float, data["std"])),
            float(data["threshold"]),
            float(data["quantile"]),
        )


def z_scores(features: np.ndarray, reference: OodReference) -> np.ndarray:
    return (features - np.asarray(reference.mean)) / np.asarray(reference.std)


def fit_reference(
    train: torch.Tensor, valid: torch.Tensor, quantile: float = THRESHOLD_QUANTILE
) -> OodReference:
    """Feature mean and std from the training images; the threshold from the validation images'
    scores."""
    features = pixel_features(train)
    # A feature constant over the training set would divide by 0; a tiny std flags any change of it.
    std = np.maximum(features.std(0), 1e-6)
    partial = OodReference(tuple(features.mean(0)), tuple(std), float("inf"), quantile)
    scores = np.abs(z_scores(pixel_features(valid), partial)).max(1)
    return OodReference(partial.mean, partial.std, float(np.quantile(scores, quantile)), quantile)


@dataclass(frozen=True)
class OodResult:
    ood: bool
    score: float
    reason: str | None  # set when flagged: the statistic furthest from the training digits


def _value(name: str, feature: float) -> float:
    value = float(np.exp(feature)) - LOG_FLOOR if name in LOG_FEATURES else float(feature)
    return max(0.0, round(value, 9))  # exp(log(x)) - x is not exactly 0


def check(images: torch.Tensor, reference: OodReference) -> list[OodResult]:
    """One result per image: flagged when its largest |z| exceeds the reference threshold."""
    features = pixel_features(images)
    z = z_scores(features, reference)
    results = []
    for row, zrow in zip(features, z, strict=True):
        worst = int(np.abs(zrow).argmax())
        score = float(abs(zrow[worst]))
        if score <= reference.threshold:
            results.append(OodResult(False, score, None))
            continue
        name = FEATURES[worst]
        usual = _value(name, reference.mean[worst])
        side = "above" if zrow[worst] > 0 else "below"
        reason = (
            f"{name.replace('_', '-')} {_value(name, row[worst]):.3g} is {score:.1f} standard "
            f"deviations {side} the training digits' {usual:.3g} (flagged beyond "
            f"{reference.threshold:.2f}, the {reference.quantile:.1%} "
            "quantile on the validation split)"
        )
        results.append(OodResult(True, score, reason))
    return results


def read_reference(path: Path) -> OodReference | None:
    """The reference evaluate wrote, or None when there is none (a model evaluate has not seen)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PipelineError(
            f"cannot read {path} ({exc.strerror or exc}); "
            "rerun the evaluate stage (dvc repro evaluate)"
        ) from None
    try:
        return OodReference.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{path} is not an off-distribution reference ({exc}); rerun the evaluate stage"
        ) from None
