"""The behaviour tier's subject: the model `dvc repro` trained from real MNIST in this repository.

These tests judge a trained model, not code, so they need models/model.pt, models/ood_reference.json
and data/raw from a finished `dvc repro` (CI runs them after its pipeline step). Without them they
fail with that instruction rather than pass or skip silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline.data.loading import load_dataset, resize
from pipeline.learner.model import MLP, load_checkpoint, model_from_checkpoint, model_outputs
from pipeline.serving.ood import OodReference, read_reference

REPO = Path(__file__).resolve().parents[2]
BATCH = 2000


@dataclass(frozen=True)
class Trained:
    checkpoint: Path
    model: MLP
    loss: str
    reference: OodReference
    test_images: torch.Tensor  # uint8 [10000, 28, 28], MNIST form (before any resize)
    test_labels: torch.Tensor
    predicted: torch.Tensor  # the model's answers to the unperturbed test images


@pytest.fixture(scope="session")
def trained() -> Trained:
    needed = [REPO / "models/model.pt", REPO / "models/ood_reference.json", REPO / "data/raw"]
    missing = [str(p.relative_to(REPO)) for p in needed if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run `dvc repro` on real MNIST first (MNIST_MIRROR or "
            "the "
            "official mirrors), or deselect this tier with -m 'slow and not model'"
        )
    payload = load_checkpoint(REPO / "models/model.pt")
    model = model_from_checkpoint(payload)
    data = load_dataset(REPO / "data/raw", 28)
    if len(data.test_labels) != 10_000:
        pytest.fail(
            f"data/raw holds {len(data.test_labels)} test images, not MNIST's 10,000; "
            "run dvc repro on MNIST"
        )
    reference = read_reference(REPO / "models/ood_reference.json")
    predicted = model_outputs(model, resize(data.test_images, model.arch.image_size), BATCH).argmax(
        1
    )
    return Trained(
        REPO / "models/model.pt",
        model,
        str(payload["loss"]),
        reference,
        data.test_images,
        data.test_labels,
        predicted,
    )
