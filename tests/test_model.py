"""The MLP: size, every configuration learns, normalisation inside, checkpoints load safely."""

from __future__ import annotations

import io
import itertools
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.config import parse_params
from pipeline.data.loading import resize
from pipeline.learner.augment import Augmentation
from pipeline.learner.model import (
    MLP,
    Architecture,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from pipeline.learner.trainer import Split, Trainer
from tests.helpers import synthetic_digits


def test_reference_architecture_has_222360_parameters() -> None:
    # Weights plus biases of each fully connected layer: sum of (fan_in + 1) * fan_out.
    model = MLP(Architecture(28, (250, 100)), 0.1307, 0.3081)
    assert (
        sum(p.numel() for p in model.parameters())
        == (784 + 1) * 250 + (250 + 1) * 100 + (100 + 1) * 10
        == 222_360
    )
    small = MLP(Architecture(16, (250, 100)), 0, 1)
    assert (
        sum(p.numel() for p in small.parameters()) == (256 + 1) * 250 + (250 + 1) * 100 + 101 * 10
    )


def test_normalisation_is_inside_the_model() -> None:
    torch.manual_seed(0)
    model = MLP(Architecture(28, (20,)), mean=0.2, std=0.5).eval()
    pixels = torch.rand(4, 28, 28)
    manual = model.output(model.hidden[1](model.hidden[0]((pixels.flatten(1) - 0.2) / 0.5)))
    torch.testing.assert_close(model(pixels), manual)
    torch.testing.assert_close(model(pixels), model(pixels.flatten(1)))


def test_sigmoid_output_lies_in_0_1() -> None:
    model = MLP(Architecture(16, (8,), "sigmoid", "sigmoid"), 0.1, 0.3)
    out = model(torch.rand(5, 256) * 50)
    assert out.shape == (5, 10) and out.min() >= 0 and out.max() <= 1


COMBINATIONS = list(
    itertools.product(
        ["relu", "sigmoid", "tanh"], ["none", "sigmoid"], ["cross_entropy", "mse"], [28, 16]
    )
)


@pytest.fixture(scope="module")
def digits() -> dict[int, Split]:
    images, labels = synthetic_digits(320, seed=11)
    raw = torch.from_numpy(images)
    return {size: Split(resize(raw, size), torch.from_numpy(labels).long()) for size in (28, 16)}


@pytest.mark.parametrize("activation,output,loss,size", COMBINATIONS)
def test_every_configuration_lowers_its_loss(
    digits: dict[int, Split], activation: str, output: str, loss: str, size: int
) -> None:
    params = parse_params(
        {
            "data": {"image_size": size},
            "model": {
                "hidden": [32, 16],
                "activation": activation,
                "output_activation": output,
                "dropout": 0.1,
            },
            "train": {
                "loss": loss,
                "lr": 0.01,
                "lr_schedule": "none",
                "batch_size": 32,
                "epochs": 2,
            },
        }
    )
    data = digits[size]
    pixels = data.images.float() / 255
    torch.manual_seed(0)
    model = MLP(Architecture.from_params(params), pixels.mean().item(), pixels.std().item())
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps_per_epoch=10)
    before, _ = trainer.evaluate(data)
    for epoch in (1, 2):
        trainer.train_epoch(data, epoch)
    after, _ = trainer.evaluate(data)
    assert (
        after < 0.98 * before
    )  # CE on sigmoid outputs is bounded below by ~1.46, so it moves slowly


def test_checkpoint_loads_with_weights_only_and_predicts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP(Architecture(16, (12, 8), "tanh", "sigmoid", 0.2), 0.12, 0.3).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, {"epoch": 3, "valid_loss": 0.5, "valid_accuracy": 0.9, "loss": "mse"}
    )
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 3 and payload["loss"] == "mse"
    restored = model_from_checkpoint(load_checkpoint(path))
    pixels = torch.rand(6, 256)
    assert restored.arch == model.arch
    assert torch.equal(restored(pixels), model(pixels))


def test_two_saves_of_the_same_weights_are_byte_identical(tmp_path: Path) -> None:
    """dvc.lock hashes model.pt: the bytes may depend on the weights only, not on the file's name
    (torch.save to a path names the archive's folder after it, and atomic writes go through random
    temp names) nor on when it was saved (torch dates every zip entry 0: it reads no clock)."""
    torch.manual_seed(0)
    model = MLP(Architecture(28, (12,)), 0.13, 0.31).eval()
    extra = {"epoch": 2, "valid_loss": 0.5, "valid_accuracy": 0.9, "loss": "cross_entropy"}
    first, second = tmp_path / "model.pt", tmp_path / "elsewhere" / "other-name.pt"
    save_checkpoint(first, model, extra)
    copy = MLP(Architecture(28, (12,)), 0.13, 0.31)
    copy.load_state_dict(model.state_dict())  # the same weights in other tensors
    save_checkpoint(second, copy, extra)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(io.BytesIO(first.read_bytes())) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 0, 0, 0, 0, 0)}
        assert {name.split("/", 1)[0] for name in archive.namelist()} == {"archive"}
    restored = model_from_checkpoint(load_checkpoint(second))
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    assert torch.load(second, weights_only=True)["epoch"] == 2
