"""Off-distribution check: is a picture's pixel make-up far from that of the training digits?

An MLP answers every input with some class, often with high confidence (uniform noise gets
>= 0.99), so `predict` flags inputs whose pixel statistics lie far outside the training set's.
The statistics are taken of what the model reads: its [N, S*S] pixel rows in [0, 1] (uint8 images
are divided by 255), so a service's float rows, predict's pictures and a 16x16 model are judged
alike. Four statistics per image, each standardised by the training split's mean and std:
- brightness: mean pixel, on a log scale (a black picture is far below every digit);
- ink: share of pixels above half brightness, log scale;
- mid-grey: share of pixels strictly between 0.1 and 0.9 (noise and grey photos have many);
- border: mean pixel of the frame, 3 pixels wide at 28x28 and in proportion at other sizes
  (MNIST digits sit in a dark frame).
The score is the largest |z| of the four. The threshold is a high quantile of the validation
split's scores (THRESHOLD_QUANTILE), so about that share of real, held-out digits is flagged.
"""

from __future__ import annotations

import functools
import json
import math
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


def as_rows(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 images [N, S, S] or pixel rows [N, S*S] in [0, 1] -> float32 rows [N, S*S]."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    rows = array.reshape(len(array), -1)
    if rows.dtype == np.uint8:
        return rows.astype(np.float32) / np.float32(255)
    return rows.astype(np.float32, copy=False)


@functools.cache
def border_weights(size: int) -> np.ndarray:
    """Weights whose dot product with a flattened S x S image is the mean of its frame: BORDER
    pixels wide at 28, in proportion at other sizes."""
    width = max(1, round(BORDER * size / 28))
    frame = np.ones((size, size), dtype=np.float32)
    frame[width : size - width, width : size - width] = 0
    return (frame / frame.sum()).ravel()


def pixel_features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images or rows (as_rows) -> float64 [N, 4] in FEATURES order, log features logged. numpy
    on float32, a few passes over the rows: the service runs it on every request."""
    pixels = as_rows(images)
    count = pixels.shape[1]
    features = np.empty((len(pixels), len(FEATURES)))
    features[:, 0] = np.add.reduce(pixels, 1) / count  # ndarray.mean, without its Python layers
    features[:, 1] = np.count_nonzero(pixels > 0.5, 1) / count
    features[:, 2] = np.count_nonzero((pixels > 0.1) & (pixels < 0.9), 1) / count
    features[:, 3] = pixels @ border_weights(math.isqrt(count))
    logged = [FEATURES.index(name) for name in LOG_FEATURES]
    features[:, logged] = np.log(features[:, logged] + LOG_FLOOR)
    return features


@dataclass(frozen=True)
class OodReference:
    mean: tuple[float, ...]  # per feature, on the training split
    std: tuple[float, ...]
    threshold: float  # scores above it are flagged
    quantile: float  # which quantile of the validation scores the threshold is
    image_size: int  # S of the rows it was fitted on: the model's data.image_size

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
            int(data["image_size"]),
        )


def z_scores(features: np.ndarray, reference: OodReference) -> np.ndarray:
    return (features - np.asarray(reference.mean)) / np.asarray(reference.std)


def fit_reference(
    train: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray,
    quantile: float = THRESHOLD_QUANTILE,
) -> OodReference:
    """Feature mean and std from the training images; the threshold from the validation images'
    scores."""
    features = pixel_features(train)
    # A feature constant over the training set would divide by 0; a tiny std flags any change of it.
    std = np.maximum(features.std(0), 1e-6)
    size = math.isqrt(as_rows(train[:1]).shape[1])
    partial = OodReference(tuple(features.mean(0)), tuple(std), float("inf"), quantile, size)
    scores = np.abs(z_scores(pixel_features(valid), partial)).max(1)
    threshold = float(np.quantile(scores, quantile))
    return OodReference(partial.mean, partial.std, threshold, quantile, size)


@dataclass(frozen=True)
class OodResult:
    ood: bool
    score: float
    reason: str | None  # set when flagged: the statistic furthest from the training digits


def _value(name: str, feature: float) -> float:
    value = float(np.exp(feature)) - LOG_FLOOR if name in LOG_FEATURES else float(feature)
    return max(0.0, round(value, 9))  # exp(log(x)) - x is not exactly 0


def flag_rows(
    images: torch.Tensor | np.ndarray, reference: OodReference
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(flagged [N], score [N], reason by index of the flagged): flagged when an image's largest
    |z| exceeds the reference threshold. Only flagged rows cost Python, to word their reason."""
    pixels = as_rows(images[:1]).shape[1] if len(images) else reference.image_size**2
    if pixels != reference.image_size**2:
        raise PipelineError(
            f"rows of {pixels} pixels cannot be checked against an off-distribution "
            f"reference fitted on {reference.image_size}x{reference.image_size} images; resize "
            "them to the model's image size first"
        )
    features = pixel_features(images)
    z = z_scores(features, reference)
    worst = np.abs(z).argmax(1)
    scores = np.abs(z[np.arange(len(z)), worst])
    flagged = scores > reference.threshold
    reasons = {}
    for i in np.flatnonzero(flagged):
        column = int(worst[i])
        name = FEATURES[column]
        usual = _value(name, reference.mean[column])
        side = "above" if z[i, column] > 0 else "below"
        reasons[int(i)] = (
            f"{name.replace('_', '-')} {_value(name, features[i, column]):.3g} is "
            f"{scores[i]:.1f} standard deviations {side} the training digits' {usual:.3g} "
            f"(flagged beyond {reference.threshold:.2f}, the {reference.quantile:.1%} "
            "quantile on the validation split)"
        )
    return flagged, scores, reasons


def check(images: torch.Tensor | np.ndarray, reference: OodReference) -> list[OodResult]:
    """One result per image or row (flag_rows)."""
    flagged, scores, reasons = flag_rows(images, reference)
    return [
        OodResult(bool(flag), float(score), reasons.get(i))
        for i, (flag, score) in enumerate(zip(flagged, scores, strict=True))
    ]


def read_reference(path: Path) -> OodReference | None:
    """The reference train wrote beside the model, or None when there is none (an older model)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PipelineError(
            f"cannot read {path} ({exc.strerror or exc}); rerun the train stage (dvc repro train)"
        ) from None
    try:
        return OodReference.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{path} is not an off-distribution reference ({exc}); rerun the train stage"
        ) from None
