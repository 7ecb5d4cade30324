"""models/last.pt: everything a killed training needs to continue, and when it may be reused.

Written after every epoch (weights, optimiser, schedule, random state, history, best weights,
MLflow run id). It is reused only when its fingerprint (training params and the bytes of every
data input) matches and the run it records did not complete; otherwise training starts fresh,
and says why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from pipeline import atomic
from pipeline.config import Params
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


def fresh_state(digest: str) -> dict:
    return {"format": LAST_FORMAT, "fingerprint": digest, "completed": False, "epoch": 0,
            "history": [], "grad_norms": [], "best": None, "mlflow_run_id": None}


def load_resume_state(path: Path, expected: str) -> dict | None:
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
    return state


def save_state(path: Path, state: dict) -> None:
    """Plain tensors and builtins only, so that the weights_only load above reads it back."""
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
