"""Loss and accuracy of a model on labelled images: one computation for train's validation and
evaluate.

Train keeps the epoch with the lowest validation loss, so this arithmetic fixes the best epoch:
per-batch mean losses, weighted by batch size and summed in float64, always in float32 (also with
train.amp, whose bf16 autocast covers training steps only). Evaluate scores with the same function,
so its valid_loss matches train's up to its batch size (evaluate.batch_size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.learner.losses import LossFn
from pipeline.learner.model import Classifier


@dataclass(frozen=True)
class Scores:
    outputs: torch.Tensor  # float32 [N, classes], the model's raw outputs
    loss: float
    accuracy: float


@torch.no_grad()
def score(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss: LossFn,
    batch_size: int,
) -> Scores:
    """Outputs, mean loss and top-1 accuracy on unaugmented uint8 images [N, S, S], in eval mode."""
    model.eval()
    loss_sum, hits, outputs = 0.0, 0, []
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        scores = model(x.float().div_(255))
        loss_sum += float(loss(scores, y)) * len(y)
        hits += int((scores.argmax(1) == y).sum())
        outputs.append(scores)
    return Scores(torch.cat(outputs), loss_sum / len(labels), hits / len(labels))
