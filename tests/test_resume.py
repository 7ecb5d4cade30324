"""models/last.pt keeps its on-disk format: a plain dict, read into TrainState and written back
unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.learner import resume


def last_pt() -> dict:
    """A last.pt as train writes it after epoch 2 (the format older files have too)."""
    return {
        "format": resume.LAST_FORMAT,
        "fingerprint": "abc",
        "completed": False,
        "epoch": 2,
        "history": [
            {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.4},
            {"epoch": 2, "train_loss": 0.3, "valid_loss": 0.45},
        ],
        "grad_norms": [{"epoch": 1, "output": 0.25}, {"epoch": 2, "output": 0.125}],
        "best": {
            "epoch": 1,
            "valid_loss": 0.4,
            "valid_accuracy": 0.875,
            "state_dict": {"w": torch.arange(3.0)},
        },
        "mlflow_run_id": "run-1",
        "trainer": {"model": {"w": torch.ones(3)}, "generator": torch.zeros(4, dtype=torch.uint8)},
    }


def assert_same(a: object, b: object) -> None:
    """Equal nested dicts and lists, keys in the same order, tensors equal."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_saved_state_loads_into_train_state_and_saves_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save(last_pt(), path)
    state = resume.load_resume_state(path, "abc")
    assert state is not None and state.epoch == 2 and state.mlflow_run_id == "run-1"
    assert state.best is not None and (state.best.epoch, state.best.valid_loss) == (1, 0.4)
    assert torch.equal(state.trainer["model"]["w"], torch.ones(3))
    resume.save_state(path, state)
    assert_same(torch.load(path, weights_only=True), last_pt())


def test_fresh_state_has_the_same_keys() -> None:
    fresh = resume.TrainState("abc").to_dict()
    assert list(fresh) == list(last_pt())
    assert (fresh["epoch"], fresh["best"], fresh["completed"], fresh["history"]) == (
        0,
        None,
        False,
        [],
    )


def test_two_saves_of_the_same_state_are_byte_identical(tmp_path: Path) -> None:
    """Whatever the file's name or its temp name: torch.save to a path would write them into the
    archive (pipeline/learner/model.py's torch_bytes)."""
    state = resume.TrainState.from_dict(last_pt())
    resume.save_state(tmp_path / "last.pt", state)
    resume.save_state(tmp_path / "members" / "7" / "other.pt", state)
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "members/7/other.pt").read_bytes()
    assert_same(torch.load(tmp_path / "last.pt", weights_only=True), last_pt())
