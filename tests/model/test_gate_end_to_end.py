"""The promotion gate end to end on real MNIST: a model trained with one digit's labels shuffled
is better at nothing that matters and much worse at that digit, and must be kept out by name."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import parse_params
from pipeline.data.datasets import FILES, TRAIN_LABELS
from pipeline.data.idx import encode_idx, read_idx

pytestmark = [pytest.mark.slow, pytest.mark.model]

REPO = Path(__file__).resolve().parents[2]
DAMAGED_DIGIT = 8
# Short training keeps this test at minutes; the gate compares two models trained alike.
PARAMS = {"data": {"name": "custom"}, "train": {"epochs": 2, "threads": 1}}


def real_mnist() -> Path:
    folder = Path(os.environ.get("MNIST_MIRROR") or REPO / "data/raw")
    if not all((folder / name).is_file() for name in FILES):
        pytest.fail(
            f"the MNIST files are not in {folder}: set MNIST_MIRROR to a folder holding them "
            "or run dvc repro"
        )
    return folder


def run_pipeline(project: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    params = parse_params(PARAMS)
    for stage in ("download", "stats", "split", "train", "evaluate", "promote"):
        importlib.import_module(f"pipeline.stages.{stage}").main(params)
    return json.loads(Path("reports/promotion.json").read_text())


def test_a_model_with_one_digit_damaged_is_kept_out_naming_the_digit(
    mlflow_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = real_mnist()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in FILES:
        (damaged / name).symlink_to(clean / name)
    labels = read_idx(clean / TRAIN_LABELS).copy()
    chosen = labels == DAMAGED_DIGIT
    labels[chosen] = np.random.default_rng(0).integers(
        0, 10, int(chosen.sum())
    )  # the 8s get random labels
    (damaged / TRAIN_LABELS).unlink()
    (damaged / TRAIN_LABELS).write_bytes(encode_idx(labels.astype(np.uint8)))

    first = run_pipeline(mlflow_workdir / "clean", clean, monkeypatch)
    assert first["decision"] == "promoted"
    second = run_pipeline(mlflow_workdir / "damaged", damaged, monkeypatch)
    assert second["decision"] == "kept" and second["champion_version"] == first["version"]
    assert "class_drop" in second["failed_gates"]
    worst = max(second["digits"], key=lambda d: d["drop_points"])
    assert worst["digit"] == DAMAGED_DIGIT and worst["failed"], second["reason"]
    assert f"digit {DAMAGED_DIGIT} " in second["reason"]
    assert second["digits"][DAMAGED_DIGIT]["p_value"] < 1e-10
