"""The dataset as in-memory uint8 tensors, at the image size the model sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.data.idx import read_idx
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Dataset:
    train_images: torch.Tensor  # uint8 [N, S, S]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 [N, H, W] images, rounded back to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    scaled = F.interpolate(
        images[:, None].float(),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return scaled[:, 0].round_().clamp_(0, 255).to(torch.uint8)


def _pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise PipelineError(
            f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise PipelineError(
            f"{labels_path}: expected uint8 labels [N], got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise PipelineError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels; re-run the download stage"
        )
    return images, labels


def load_dataset(
    raw_dir: Path, image_size: int, extra: tuple[np.ndarray, np.ndarray] | None = None
) -> Dataset:
    """The official files; `extra` (labelled batches, pipeline/data/labelled.py) follows the
    official training images, so their indices start at the official count."""
    train_images, train_labels = _pair(raw_dir / TRAIN_IMAGES, raw_dir / TRAIN_LABELS)
    if extra is not None:
        if extra[0].shape[1:] != train_images.shape[1:]:
            raise PipelineError(
                f"labelled images are {list(extra[0].shape[1:])} but {raw_dir / TRAIN_IMAGES} "
                f"holds {list(train_images.shape[1:])}; labelled batches must match the dataset"
            )
        train_images = np.concatenate([train_images, extra[0]])
        train_labels = np.concatenate([train_labels, extra[1]])
    test_images, test_labels = _pair(raw_dir / TEST_IMAGES, raw_dir / TEST_LABELS)
    return Dataset(
        train_images=resize(torch.from_numpy(train_images), image_size),
        train_labels=torch.from_numpy(train_labels).long(),
        test_images=resize(torch.from_numpy(test_images), image_size),
        test_labels=torch.from_numpy(test_labels).long(),
    )
