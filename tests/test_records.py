"""pipeline/serving/records.py: every answer of predict and the served model is recorded, one whole
Parquet file per request, partitioned by day; concurrent writers lose and interleave nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from pipeline.serving import records
from pipeline.serving.ood import fit_reference
from pipeline.serving.service import Answerer, ServingGraph, fit_references
from tests.helpers import synthetic_digits, train_tiny


def read_store(root: Path) -> dict:
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    return table.to_pydict()


@pytest.fixture(scope="module")
def graph() -> ServingGraph:
    return ServingGraph(train_tiny(28), "cross_entropy")


def answerer_for(graph: ServingGraph, recorder: records.Recorder | None) -> Answerer:
    train, _ = synthetic_digits(300, seed=0)
    valid, _ = synthetic_digits(100, seed=1)
    reference = fit_reference(torch.from_numpy(train), torch.from_numpy(valid))
    return Answerer(graph, 28, reference, recorder)


def rows(n: int, seed: int = 4) -> torch.Tensor:
    images, _ = synthetic_digits(n, seed)
    return torch.from_numpy(images.reshape(n, -1).astype(np.float32) / 255)


def test_each_answer_is_recorded_with_the_model_and_its_features(
    graph: ServingGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path))
    answerer = answerer_for(graph, records.recorder("m-123", "service"))
    first = answerer.answer(rows(5))
    answerer.answer(rows(3, seed=5))
    files = sorted(tmp_path.rglob("*.parquet"))
    assert len(files) == 2 and all(f.parent.name.startswith("date=") for f in files)
    stored = read_store(tmp_path)
    assert len(stored["digit"]) == 8 and set(stored["model"]) == {"m-123"}
    assert set(stored["source"]) == {"service"} and "pixels" not in stored
    first_file = ds.dataset(files[0]).to_table().to_pydict()
    if len(first_file["digit"]) != 5:  # the two files sort by time, but within one microsecond
        first_file = ds.dataset(files[1]).to_table().to_pydict()
    assert first_file["digit"] == [a["digit"] for a in first]
    assert first_file["probability"] == pytest.approx([a["probability"] for a in first], abs=1e-6)
    assert first_file["ood"] == [a["ood"] for a in first]
    assert len(first_file["features"][0]) == 32  # the tiny MLP's last hidden layer
    assert not list(tmp_path.rglob(".*.parquet")), "no half-written file is left behind"


def test_pixels_are_kept_only_when_asked_and_off_records_nothing(
    graph: ServingGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path / "with-pixels"))
    monkeypatch.setenv(records.PIXELS_ENV, "1")
    answerer_for(graph, records.recorder("m-1", "predict")).answer(rows(2))
    stored = read_store(tmp_path / "with-pixels")
    assert np.allclose(stored["pixels"], rows(2).numpy())
    monkeypatch.setenv(records.RECORDS_ENV, "off")
    assert records.recorder("m-1", "predict") is None


def test_an_unwritable_store_is_one_line_and_the_answer_still_goes_out(
    graph: ServingGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(records.RECORDS_ENV, str(blocker / "records"))
    answers = answerer_for(graph, records.recorder("m-1", "service")).answer(rows(2))
    assert len(answers) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not record 2 answers in ")
    assert "check $MNIST_RECORDS" in err[0]


def write_many(root: str, worker: int) -> None:
    recorder = records.Recorder(*records.store(root), f"m-{worker}", "service")
    for i in range(40):
        recorder.write(
            np.zeros((3, 4), np.float32),
            [{"digit": i % 10, "probability": 0.5, "ood": False} for _ in range(3)],
            np.full((3, 2), worker, np.float32),
        )


def test_concurrent_writers_lose_and_interleave_nothing(tmp_path: Path) -> None:
    """Four processes, as four server workers, 40 requests of 3 answers each, at once."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    stored = read_store(tmp_path)
    assert len(stored["digit"]) == 4 * 40 * 3
    for model, features in zip(stored["model"], stored["features"], strict=True):
        assert features == [float(model.removeprefix("m-"))] * 2  # each record whole, its own
    assert len(list(tmp_path.rglob("*.parquet"))) == 4 * 40


def test_predict_records_its_answers_under_the_checkpoints_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from PIL import Image

    from pipeline.learner.model import save_checkpoint

    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, train_tiny(28), {"loss": "cross_entropy", "epoch": 1})
    images, _ = synthetic_digits(2, seed=3)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"d{i}.png")
    store = tmp_path / "store"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            str(tmp_path / "d0.png"),
            str(tmp_path / "d1.png"),
            "--model",
            str(checkpoint),
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MNIST_RECORDS": str(store)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    stored = read_store(store)
    md5 = hashlib.md5(checkpoint.read_bytes()).hexdigest()
    assert stored["model"] == [f"md5:{md5}"] * 2 and stored["source"] == ["predict"] * 2
    assert sorted(stored["digit"]) == sorted(a["label"] for a in answers)


def test_registering_a_model_records_nothing(
    mlflow_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow answers the input example when train logs the model: no client asked that."""
    import mlflow

    from pipeline.registry import tracking
    from pipeline.serving import registration

    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path / "store"))
    tracking.configure()
    mlflow.set_experiment("records")
    train, _ = synthetic_digits(100, seed=0)
    model = train_tiny(28)
    references = fit_references(
        model, "cross_entropy", torch.from_numpy(train), torch.from_numpy(train)
    )
    with mlflow.start_run():
        registration.log_model(model, "cross_entropy", references, "mnist-mlp")
    assert not list((tmp_path / "store").rglob("*.parquet"))
    assert os.environ[records.RECORDS_ENV] == str(tmp_path / "store"), "restored after"
