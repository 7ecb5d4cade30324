"""models/last.pt: everything a killed training needs to continue, and when it may be reused.

Written after every epoch (weights, optimiser, schedule, random state, history, best weights,
MLflow run id). It is reused only when its fingerprint (training params and the bytes of every
data input) matches and the run it records did not complete; otherwise training starts fresh,
and says why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline import atomic
from pipeline.config import Params
from pipeline.learner.model import torch_bytes
from pipeline.progress import log

LAST_FORMAT = "mnist-mlp-last/1"


def fingerprint(params: Params, dataset_md5: dict[str, str], files: list[Path]) -> str:
    """What the trained weights depend on: training params and the bytes of every data input."""
    relevant = {
        "image_size": params.data.image_size,
        "model": params.model.model_dump(),
        "augment": params.augment.model_dump(),
        "train": params.train.model_dump(),
        "raw": dataset_md5,
        "files": {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


@dataclass
class BestEpoch:
    """The epoch with the lowest validation loss so far, and its weights (on the CPU)."""

    epoch: int
    valid_loss: float
    valid_accuracy: float
    state_dict: dict[str, torch.Tensor]


@dataclass
class TrainState:
    """What last.pt holds. On disk a plain dict (`to_dict`), the format older files have too."""

    fingerprint: str
    completed: bool = False
    epoch: int = 0  # the last completed epoch
    history: list[dict[str, float]] = field(default_factory=list)  # train_history.csv rows
    grad_norms: list[dict[str, float]] = field(default_factory=list)  # grad_norms.csv rows
    best: BestEpoch | None = None
    mlflow_run_id: str | None = None
    trainer: dict[str, Any] = field(default_factory=dict)  # Trainer.state_dict() after `epoch`

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and builtins only, so that a weights_only load reads it back."""
        return {
            "format": LAST_FORMAT,
            "fingerprint": self.fingerprint,
            "completed": self.completed,
            "epoch": self.epoch,
            "history": self.history,
            "grad_norms": self.grad_norms,
            "best": None if self.best is None else dict(vars(self.best)),
            "mlflow_run_id": self.mlflow_run_id,
            "trainer": self.trainer,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        best = state["best"]
        return cls(
            fingerprint=state["fingerprint"],
            completed=state["completed"],
            epoch=state["epoch"],
            history=state["history"],
            grad_norms=state["grad_norms"],
            best=None if best is None else BestEpoch(**best),
            mlflow_run_id=state["mlflow_run_id"],
            trainer=state["trainer"],
        )


def load_resume_state(path: Path, expected: str) -> TrainState | None:
    """The saved state of an interrupted run with the same fingerprint, else None (and why)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises KeyError, EOFError, RuntimeError... on damage
        log(f"{path} is unreadable ({type(exc).__name__}); starting fresh")
        return None
    if not isinstance(state, dict) or state.get("format") != LAST_FORMAT:
        log(f"{path} is not a {LAST_FORMAT} file; starting fresh")
        return None
    if state["fingerprint"] != expected:
        log(f"{path} was written with other params or data; starting fresh")
        return None
    if state["completed"]:
        log(f"{path} holds a completed run; starting fresh")
        return None
    log(f"resuming from {path} after epoch {state['epoch']}")
    return TrainState.from_dict(state)


def save_state(path: Path, state: TrainState) -> None:
    """Atomically, with the same bytes for the same state whatever the temp name (torch_bytes)."""
    atomic.write_bytes(path, torch_bytes(state.to_dict()))
