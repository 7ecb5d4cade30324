"""pipeline/learner/scoring.py: train's validation and the evaluate stage score a model with one
function."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import parse_params
from pipeline.learner import trainer
from pipeline.learner.augment import Augmentation
from pipeline.learner.losses import loss_fn
from pipeline.learner.model import MLP, Architecture
from pipeline.learner.scoring import score
from pipeline.stages import evaluate
from tests.helpers import synthetic_digits


def _model_and_data() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    x, y = synthetic_digits(50, seed=3)
    torch.manual_seed(0)
    return MLP(Architecture(28, (32,)), 0.2, 0.3), torch.from_numpy(x), torch.from_numpy(y).long()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_evaluate_scores_like_train_bit_for_bit(monkeypatch: pytest.MonkeyPatch, amp: bool) -> None:
    """At the same batch size evaluate's loss and accuracy are exactly the ones train picks the best
    epoch by, also when train.amp trains under bf16 autocast."""
    model, images, labels = _model_and_data()
    params = parse_params({"train": {"amp": amp}})
    monkeypatch.setattr(trainer, "EVAL_BATCH", 7)  # several batches, the last one short
    expected = trainer.Trainer(model, params.train, Augmentation.from_params(params), 1).evaluate(
        trainer.Split(images, labels)
    )
    result = evaluate.evaluate(
        model, "cross_entropy", (images, labels), (images, labels), batch_size=7
    )
    assert (result.metrics["valid_loss"], result.metrics["valid_accuracy"]) == expected
    assert (result.metrics["test_loss"], result.metrics["test_accuracy"]) == expected


def test_score_weights_batch_means_by_batch_size() -> None:
    model, images, labels = _model_and_data()
    loss = loss_fn("cross_entropy")
    whole = score(model, images, labels, loss, batch_size=50)
    batched = score(model, images, labels, loss, batch_size=7)
    assert batched.loss == pytest.approx(
        whole.loss, rel=1e-6
    )  # not a plain mean of the 8 batch means
    assert batched.accuracy == whole.accuracy
    torch.testing.assert_close(
        batched.outputs, whole.outputs
    )  # batched matmuls differ in the last bits
    assert batched.outputs.dtype == torch.float32 and batched.outputs.shape == (50, 10)
    with torch.no_grad():
        assert whole.loss == pytest.approx(
            float(loss(model(images.float() / 255), labels)), rel=1e-6
        )
