"""Stage `stats`: mean and std of the training pixels, as the model sees them, for its input
normalisation.

Taken on all official training images (not only the train split), so that changing the split
seed leaves data/stats.json, and everything built on it, unchanged.
"""

from __future__ import annotations

import math

import torch

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.paths import RAW_DIR
from pipeline.progress import log


def pixel_stats(images: torch.Tensor) -> dict[str, float]:
    """Mean and population std of uint8 pixels scaled to [0, 1].

    A 256-bin histogram turns the sums into exact integers, so the only rounding is in the final
    float64 division and square root: the result does not depend on summation order or threads.
    """
    if images.dtype != torch.uint8:
        raise PipelineError(f"pixel statistics need uint8 images, got {images.dtype}")
    if images.numel() == 0:
        raise PipelineError(
            "no training images to compute statistics on; re-run the download stage"
        )
    counts = torch.bincount(images.reshape(-1), minlength=256).tolist()
    n = sum(counts)
    total = sum(value * count for value, count in enumerate(counts))
    squares = sum(value * value * count for value, count in enumerate(counts))
    # n^2 * 255^2 * variance, exactly: n * sum(x^2) - (sum x)^2.
    spread = n * squares - total * total
    return {"mean": total / (n * 255), "std": math.sqrt(spread) / (n * 255)}


def main(params: Params) -> None:
    size = params.data.image_size
    images = load_dataset(RAW_DIR, size).train_images
    moments = pixel_stats(images)
    stats: artifacts.Stats = {
        "mean": moments["mean"],
        "std": moments["std"],
        "image_size": size,
        "count": len(images),
    }
    artifacts.write_stats(stats)
    log(
        f"stats: mean {stats['mean']:.6f}, std {stats['std']:.6f} over {len(images):,} images at "
        f"{size}x{size}"
    )
