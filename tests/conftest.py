"""Shared fixtures: tiny synthetic IDX datasets written by the tests themselves (no network).

Shared plain code lives in tests/helpers.py; test modules never import this file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY_PIPELINE, VALIDATION_ENTRY, write_dataset

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def records_in_a_scratch_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """predict and the served model record every answer (pipeline/serving/records.py), by default
    under ./records; a test's go to a store of its own, and servers it starts inherit it."""
    store = tmp_path_factory.mktemp("records")
    monkeypatch.setenv("MNIST_RECORDS", str(store))
    monkeypatch.delenv("MNIST_RECORDS_PIXELS", raising=False)
    return store


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
    # Not inside any git checkout, whatever pytest's base temp lies in: promote's main-line rule
    # (pipeline/registry/mainline.py) treats such a folder as the main line.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return root


@pytest.fixture
def trained_workdir(mlflow_workdir: Path, synthetic_mirror: Path) -> Path:
    """mlflow_workdir holding what download..train leave behind, on tiny synthetic data.

    Raw data and checksums come from the real download stage; the split, the validation summary,
    a briefly trained two-layer MLP, its MLflow run and the per-epoch CSVs are written through the
    writers those stages use (pipeline/artifacts.py), so evaluate and report can be tested alone.
    """
    import mlflow

    from pipeline import artifacts, paths
    from pipeline.config import parse_params
    from pipeline.data import fetch
    from pipeline.data.loading import load_dataset
    from pipeline.learner.losses import loss_fn
    from pipeline.learner.model import MLP, Architecture, save_checkpoint
    from pipeline.registry import tracking

    fetch.download(
        parse_params({"data": {"name": "custom"}}),
        paths.RAW_DIR,
        {"MNIST_MIRROR": str(synthetic_mirror)},
    )
    data = load_dataset(paths.RAW_DIR, 28)
    pixels = data.train_images.float() / 255
    artifacts.write_stats(
        {
            "mean": pixels.mean().item(),
            "std": pixels.std(correction=0).item(),
            "image_size": 28,
            "count": len(pixels),
        }
    )
    order = np.random.default_rng(0).permutation(len(pixels))
    valid_idx, train_idx = np.sort(order[: len(order) // 10]), np.sort(order[len(order) // 10 :])
    artifacts.write_index(paths.TRAIN_INDEX_FILE, train_idx.astype(np.int64))
    artifacts.write_index(paths.VALID_INDEX_FILE, valid_idx.astype(np.int64))
    artifacts.write_validation(
        {
            "success": True,
            "counts": {
                "train": len(train_idx),
                "valid": len(valid_idx),
                "test": len(data.test_labels),
            },
            "expectations": [VALIDATION_ENTRY],
        }
    )

    torch.manual_seed(0)
    model = MLP(Architecture(28, (32, 16)), pixels.mean().item(), pixels.std(correction=0).item())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)  # short and slow: ~80% test accuracy
    loss = loss_fn("cross_entropy")
    x, y = pixels[train_idx], data.train_labels[train_idx]
    vx, vy = pixels[valid_idx], data.train_labels[valid_idx]
    history, norms = [], []
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for epoch in range(1, 4):
        model.train()
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
        norms.append(
            {"epoch": epoch, **{n: m.weight.grad.norm().item() for n, m in layers.items()}}
        )
        model.eval()
        with torch.no_grad():
            out, vout = model(x), model(vx)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss(out, y).item(),
                "train_acc": (out.argmax(1) == y).float().mean().item(),
                "valid_loss": loss(vout, vy).item(),
                "valid_acc": (vout.argmax(1) == vy).float().mean().item(),
                "seconds": 1.5,
                "lr": 0.003,
            }
        )
    artifacts.write_history(history)
    artifacts.write_grad_norms(norms)
    save_checkpoint(
        paths.MODEL_FILE,
        model,
        {
            "epoch": 3,
            "valid_loss": history[-1]["valid_loss"],
            "valid_accuracy": history[-1]["valid_acc"],
            "loss": "cross_entropy",
        },
    )
    mlflow.set_tracking_uri(tracking.tracking_uri())
    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run() as run:
        mlflow.log_param("train.epochs", 3)
    artifacts.write_run_reference(run.info.run_id, run.info.experiment_id)
    return mlflow_workdir


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store whose schema is created once per session (seconds per fresh
    store)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_workdir(workdir: Path, migrated_mlflow_db: Path) -> Path:
    """workdir whose sqlite store starts as a copy of the migrated template.

    Log into a named experiment: the template's Default experiment keeps its artifacts elsewhere.
    """
    import shutil

    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    return workdir


@pytest.fixture
def run_stages(mlflow_workdir: Path, synthetic_mirror: Path, monkeypatch: pytest.MonkeyPatch):
    """Run stages in-process, each as `python -m pipeline <stage>` does, on the tiny synthetic data.

    `run_stages("download", "stats", ...)` returns the Params used (TINY_PIPELINE).
    """
    import importlib

    from pipeline.config import parse_params

    monkeypatch.setenv("MNIST_MIRROR", str(synthetic_mirror))
    params = parse_params(TINY_PIPELINE)

    def run(*stages: str):
        for stage in stages:
            importlib.import_module(f"pipeline.stages.{stage}").main(params)
        return params

    return run


@pytest.fixture
def dvc_project(tmp_path: Path, synthetic_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC repository (cwd) holding this pipeline with TINY_PIPELINE params, for tests
    that run dvc itself. MNIST_MIRROR points at the synthetic data and MLflow uses the repository's
    own mlflow.db, as it would for a user without MLFLOW_TRACKING_URI."""
    import shutil
    import subprocess
    import sys

    import yaml

    source = Path(__file__).resolve().parents[1]
    root = tmp_path / "repo"
    for folder in ("pipeline", "scripts", "requirements"):  # requirements: a dep of the stages
        shutil.copytree(
            source / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in (
        "dvc.yaml",
        ".dvcignore",
        ".gitignore",
        "data/upstream.json",
        "data/labelled.json",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, root / name)
    params = yaml.safe_load((source / "params.yaml").read_text())
    for section, values in TINY_PIPELINE.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MNIST_MIRROR", str(synthetic_mirror))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    monkeypatch.chdir(root)
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "pipeline"],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    return root


SLOW_TIMEOUT_S = 1800  # above the slow tests' own subprocess limits (scripts/retrain.sh: 1200 s)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """@slow tests run whole pipelines: they get SLOW_TIMEOUT_S instead of pyproject's `timeout`."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
