"""Stage `stats`: exact float64 pixel mean/std of the training images at the size the model sees."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pipeline import paths
from pipeline.config import parse_params
from pipeline.data import fetch
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.stages import stats


def reference(images: torch.Tensor) -> tuple[float, float]:
    pixels = images.numpy().astype(np.float64) / 255
    return pixels.mean(), pixels.std()


def test_pixel_stats_match_numpy_float64():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.integers(0, 256, size=(500, 28, 28), dtype=np.uint8))
    images[:100] = 0  # a skewed histogram, like digits on a black background
    result = stats.pixel_stats(images)
    mean, std = reference(images)
    assert result["mean"] == pytest.approx(mean, rel=1e-13, abs=0)
    assert result["std"] == pytest.approx(std, rel=1e-13, abs=0)


def test_pixel_stats_extremes():
    assert stats.pixel_stats(torch.zeros(3, 4, 4, dtype=torch.uint8)) == {"mean": 0.0, "std": 0.0}
    assert stats.pixel_stats(torch.full((3, 4, 4), 255, dtype=torch.uint8)) == {
        "mean": 1.0,
        "std": 0.0,
    }
    half = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    assert stats.pixel_stats(half) == {"mean": 0.5, "std": 0.5}


def test_pixel_stats_reject_bad_input():
    with pytest.raises(PipelineError, match="uint8"):
        stats.pixel_stats(torch.zeros(2, 4, 4))
    with pytest.raises(PipelineError, match="no training images"):
        stats.pixel_stats(torch.zeros(0, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("size", [28, 16])
def test_stage_writes_stats_of_images_as_the_model_sees_them(workdir, synthetic_mirror, size):
    fetch.download(
        parse_params({"data": {"name": "custom"}}),
        paths.RAW_DIR,
        {"MNIST_MIRROR": str(synthetic_mirror)},
    )
    stats.main(parse_params({"data": {"name": "custom", "image_size": size}}))
    written = json.loads(paths.STATS_FILE.read_text())
    images = load_dataset(paths.RAW_DIR, size).train_images
    assert images.shape[1:] == (size, size)
    mean, std = reference(images)
    assert written == {
        "mean": pytest.approx(mean, rel=1e-13),
        "std": pytest.approx(std, rel=1e-13),
        "image_size": size,
        "count": 600,
    }
    if size == 16:  # resizing changes the statistics, so they must be taken after it
        _, full_std = reference(load_dataset(paths.RAW_DIR, 28).train_images)
        assert abs(written["std"] - full_std) > 1e-3


@pytest.mark.slow
def test_real_mnist_statistics(tmp_path, monkeypatch):
    mirror = os.environ.get("MNIST_MIRROR")
    if not mirror:
        pytest.skip("set MNIST_MIRROR to a folder with the official MNIST files")
    monkeypatch.chdir(tmp_path)
    fetch.download(parse_params({}), paths.RAW_DIR, {"MNIST_MIRROR": mirror})  # MD5-verified MNIST
    stats.main(parse_params({}))
    written = json.loads(paths.STATS_FILE.read_text())
    assert written["count"] == 60000 and written["image_size"] == 28
    assert written["mean"] == pytest.approx(0.1306604762738429, abs=1e-9)
    assert written["std"] == pytest.approx(0.30810780385646264, abs=1e-9)
