"""The training losses and what the model's outputs mean under each, shared by train and evaluate.

Evaluation must score a checkpoint with the very loss it was trained on, so both stages take it
from here by the name stored in the checkpoint ("loss"). The model's outputs go in as they are:
with `output_activation: sigmoid` they are sigmoid scores, and cross-entropy is taken on those
scores (as the reference notebook does), not on the pre-sigmoid values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.data.datasets import NUM_CLASSES
from pipeline.errors import PipelineError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, labels)


def _mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, F.one_hot(labels, NUM_CLASSES).to(outputs.dtype))


LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "mse": _mse}


def _check(name: str) -> None:
    if name not in LOSSES:
        raise PipelineError(
            f"unknown loss {name!r} (known: {', '.join(LOSSES)}); retrain the model with this "
            "pipeline"
        )


def loss_fn(name: str, label_smoothing: float = 0.0) -> LossFn:
    """Mean loss over the batch: `loss_fn(name)(model_outputs, int64_labels)`.

    `label_smoothing` > 0 (cross-entropy only) trains against targets that give each other class
    label_smoothing / 10 of the mass; at 0 the loss is exactly the plain one.
    """
    _check(name)
    if not label_smoothing:
        return LOSSES[name]
    if name != "cross_entropy":
        raise PipelineError(
            f"train.label_smoothing applies to the cross_entropy loss only, not {name}; set "
            "-S train.label_smoothing=0 or use -S train.loss=cross_entropy"
        )
    return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)


def probabilities(outputs: torch.Tensor, name: str) -> torch.Tensor:
    """Per-class probabilities as the loss reads the outputs.

    Cross-entropy treats the outputs as logits, so softmax gives its distribution. Least squares
    on one-hot targets makes each output an estimate of its class's probability; those are
    clipped to [0, 1] and normalised to sum 1, so that confidence, calibration error and NLL
    mean the same for both losses. A row that clips to all zeros says nothing: uniform.
    """
    _check(name)
    if name == "cross_entropy":
        return torch.softmax(outputs, dim=1)
    clipped = outputs.clamp(0.0, 1.0)
    total = clipped.sum(1, keepdim=True)
    return torch.where(
        total > 0, clipped / total.clamp_min(1e-30), torch.full_like(clipped, 1.0 / NUM_CLASSES)
    )
