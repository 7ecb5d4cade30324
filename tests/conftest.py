"""Shared fixtures: tiny synthetic IDX datasets written by the tests themselves (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.idx import encode_idx

torch.set_num_threads(1)


def synthetic_digits(count: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights a band of rows and columns that depends on k, plus noise.

    Every image is distinct and none is blank, so the data checks pass on it.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, size, size)).astype(np.int32)
    band = max(size // 10, 1)
    for k in range(10):
        rows = slice(k * band * 3 // 4 + 2, k * band * 3 // 4 + 2 + band)
        cols = slice(size - 2 - (k + 1) * band * 3 // 4 - band, size - 2 - (k + 1) * band * 3 // 4)
        images[labels == k, rows, :] += 180
        images[labels == k, :, cols] += 120
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed)
    test_x, test_y = synthetic_digits(n_test, seed + 1)
    for name, array in [(TRAIN_IMAGES, train_x), (TRAIN_LABELS, train_y), (TEST_IMAGES, test_x), (TEST_LABELS, test_y)]:
        (folder / name).write_bytes(encode_idx(array))
    return folder


@pytest.fixture
def synthetic_mirror(tmp_path: Path) -> Path:
    """A folder holding the four canonical IDX files of a tiny synthetic dataset."""
    return write_dataset(tmp_path / "mirror")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as cwd, with MLflow pointed at a throwaway sqlite store."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return root
