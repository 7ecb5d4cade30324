"""An exponential moving average (EMA) of the model's weights, for validation and the saved model.

After every optimiser step each averaged parameter moves a share (1 - decay) of the way to the
trained one: ema = decay * ema + (1 - decay) * weight. The average starts at the initial weights
and smooths out the last steps' noise, which the single weights of a noisy (augmented, dropout)
run carry. Buffers (the input mean and std) never change in training, so the copy keeps them.
"""

from __future__ import annotations

import copy

import torch

from pipeline.learner.model import MLP


class WeightAverage:
    """The EMA copy of `model` (in eval mode, no gradients) and its update after each step."""

    def __init__(self, model: MLP, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._trained = list(model.parameters())
        self._averaged = list(self.model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the trained model's current weights."""
        for averaged, trained in zip(self._averaged, self._trained, strict=True):
            averaged.lerp_(trained, 1.0 - self.decay)
