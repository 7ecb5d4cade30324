"""`python -m pipeline monitor`: a window of records, split by the model that answered, judged
against that model's reference; every bad input is one line, and nothing in the store changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.__main__ import main as cli
from pipeline.paths import COMMITTEE, MONITORING_FILE, MONITORING_HTML_FILE, Layout
from pipeline.serving import drift, monitor, records
from tests.test_drift import answers


def local_model(layout: Layout, content: bytes, seed: int) -> str:
    """A checkpoint file (its bytes only matter for the md5) with a reference beside it."""
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    layout.model.write_bytes(content)
    probabilities, features = answers(2000, seed=seed)
    drift.build_reference(probabilities, features, 0.999).save(layout.monitor_reference)
    return "md5:" + hashlib.md5(content).hexdigest()


def record(model: str, n: int, seed: int, shift: float = 0.0) -> None:
    """n answers of `model`, as predict records them, in the store MNIST_RECORDS names."""
    recorder = records.recorder(model, "predict")
    assert recorder is not None
    probabilities, features = answers(n, seed, shift)
    digits = probabilities.argmax(1)
    rows = [
        {"digit": int(d), "probability": float(p[d]), "ood": False}
        for d, p in zip(digits, probabilities.round(6), strict=True)
    ]
    assert recorder.write(np.zeros((n, 4), np.float32), rows, features)


@pytest.fixture
def project(mlflow_workdir: Path, records_in_a_scratch_store: Path) -> Path:
    (mlflow_workdir / "params.yaml").write_text("monitor:\n  min_records: 50\n")
    return mlflow_workdir


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    status = cli(["monitor", *args])
    return status, capsys.readouterr().err


def test_no_records_yet_is_said_and_is_no_alarm(project: Path, capsys) -> None:
    status, err = run(capsys, "--days", "7")
    assert status == 0 and "no records in the last 7 days" in err
    assert '"verdict": "no records"' in MONITORING_FILE.read_text()


def test_ordinary_records_pass_and_shifted_ones_alarm(project: Path, capsys) -> None:
    model = local_model(Layout(), b"model A", seed=0)
    record(model, 300, seed=10)
    status, err = run(capsys, "--last", "300")
    assert status == 0 and "no drift" in err, err
    record(model, 300, seed=11, shift=0.6)
    status, err = run(capsys, "--last", "300")
    assert status == monitor.DRIFT_EXIT and "DRIFT" in err and "features" in err
    assert "<img" in MONITORING_HTML_FILE.read_text()


def test_models_are_kept_apart(project: Path, capsys) -> None:
    """The server answers with the version it loaded; each version's records meet its own
    reference, and the report lists each."""
    first = local_model(Layout(), b"version 1", seed=0)
    second = local_model(COMMITTEE, b"version 2", seed=5)
    record(first, 200, seed=20)
    record(second, 200, seed=21, shift=0.6)
    record(first, 10, seed=22)
    status, _ = run(capsys)
    report = json.loads(MONITORING_FILE.read_text())
    by_model = {m["model"]: m for m in report["models"]}
    assert status == monitor.DRIFT_EXIT
    assert by_model[first]["records"] == 210 and not by_model[first]["drift"]
    assert by_model[second]["records"] == 200 and by_model[second]["drift"]


def test_too_few_records_are_listed_not_judged(project: Path, capsys) -> None:
    model = local_model(Layout(), b"model", seed=0)
    record(model, 20, seed=1)
    status, err = run(capsys)
    assert status == 0 and "too few records" in err


def test_a_corrupt_record_file_is_named_and_left_alone(
    project: Path, records_in_a_scratch_store: Path, capsys
) -> None:
    model = local_model(Layout(), b"model", seed=0)
    record(model, 100, seed=1)
    day = next(records_in_a_scratch_store.glob("date=*"))
    broken = day / "000000000000-1-broken.parquet"
    broken.write_bytes(b"PAR1 half a file")
    status, err = run(capsys)
    assert status == 1 and err.count("\n") == 1
    assert str(broken) in err and "move it out" in err
    assert broken.read_bytes() == b"PAR1 half a file"
    assert not MONITORING_FILE.exists()


def test_a_missing_reference_is_one_line(project: Path, capsys) -> None:
    record("md5:" + "0" * 32, 100, seed=1)
    status, err = run(capsys)
    assert status == 1 and err.count("\n") == 1 and "monitoring reference is missing" in err


def test_a_registered_model_without_a_reference_is_one_line(project: Path, capsys) -> None:
    record("m-0123456789abcdef", 100, seed=1)
    status, err = run(capsys)
    assert status == 1 and err.count("\n") == 1
    assert "no monitoring reference for model m-0123456789abcdef" in err


def test_records_switched_off_is_one_line(project: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(records.RECORDS_ENV, "off")
    status, err = run(capsys)
    assert status == 1 and err.count("\n") == 1 and "MNIST_RECORDS" in err


def test_each_monitor_is_a_run_of_the_monitoring_experiment(project: Path, capsys) -> None:
    import mlflow

    model = local_model(Layout(), b"model", seed=0)
    record(model, 100, seed=1)
    run(capsys)
    record(model, 100, seed=2, shift=0.6)
    run(capsys, "--last", "100")
    runs = mlflow.search_runs(experiment_names=["monitoring"], order_by=["start_time ASC"])
    assert list(runs["metrics.drift"]) == [0, 1]
    assert runs["metrics.p_features"].iloc[1] < 0.01 < runs["metrics.p_features"].iloc[0]
    assert set(runs["tags.verdict"]) == {"no drift", "drift"}


def test_the_window_reads_by_day_and_by_count(project: Path) -> None:
    from datetime import datetime, timedelta, timezone

    model = local_model(Layout(), b"model", seed=0)
    record(model, 30, seed=1)
    record(model, 20, seed=2)
    assert len(records.read_window(7, None)) == 50
    assert len(records.read_window(None, 25)) == 25
    later = datetime.now(timezone.utc) + timedelta(days=3)
    assert len(records.read_window(1, None, now=later)) == 0
