"""The MLP, and checkpoints that carry everything needed to rebuild and use it.

The model takes pixels scaled to [0, 1] and normalises them itself with the training set's mean
and std (stored as buffers), so a checkpoint or logged model never needs the stats beside it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import atomic, paths
from pipeline.config import Params
from pipeline.data.datasets import NUM_CLASSES
from pipeline.errors import PipelineError

CHECKPOINT_FORMAT = "mnist-mlp/1"
COMMITTEE_FORMAT = "mnist-mlp-committee/1"  # {"members": [CHECKPOINT_FORMAT payloads], ...}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@dataclass(frozen=True)
class Architecture:
    image_size: int
    hidden: tuple[int, ...]
    activation: str = "relu"
    output_activation: str = "none"
    dropout: float = 0.0

    @property
    def input_size(self) -> int:
        return self.image_size * self.image_size

    @classmethod
    def from_params(cls, params: Params) -> Architecture:
        m = params.model
        return cls(
            params.data.image_size, tuple(m.hidden), m.activation, m.output_activation, m.dropout
        )


class MLP(nn.Module):
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, arch: Architecture, mean: float, std: float) -> None:
        super().__init__()
        self.arch = arch
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        layers: list[nn.Module] = []
        fan_in = arch.input_size
        for width in arch.hidden:
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[arch.activation]()]
            if arch.dropout > 0:
                layers.append(nn.Dropout(arch.dropout))
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(fan_in, NUM_CLASSES)

    @property
    def image_size(self) -> int:
        return self.arch.image_size

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations: for PCA and t-SNE, and the served features."""
        x = pixels.flatten(1)
        return self.hidden((x - self.mean) / self.std)

    def scores_and_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class scores and the features they were computed from, in one pass."""
        features = self.features(pixels)
        scores = self.output(features)
        if self.arch.output_activation == "sigmoid":
            scores = torch.sigmoid(scores)
        return scores, features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], shape [N, S*S] or [N, S, S] -> 10 class scores per row."""
        return self.scores_and_features(pixels)[0]


class Committee(nn.Module):
    """MLPs that vote by their mean softmax output, as one model with the single MLP's contract.

    forward returns the log of the members' mean softmax: read as logits (the cross_entropy way of
    pipeline/learner/losses.py), its softmax is that mean itself, so confidence, calibration, NLL,
    predict and promotion treat the committee's probabilities exactly as one MLP's, and its argmax
    is the committee's vote. One forward holds every member, so torch.export gives one pt2 graph
    taking [N, S*S] pixels like a single MLP.
    """

    def __init__(self, members: Sequence[MLP]) -> None:
        super().__init__()
        sizes = {member.image_size for member in members}
        if len(sizes) != 1:
            raise PipelineError(
                f"committee members read images of sizes {sorted(sizes)}; train them all with "
                "the same data.image_size"
            )
        self.members = nn.ModuleList(members)
        self._image_size = sizes.pop()

    @property
    def image_size(self) -> int:
        return self._image_size

    def mlps(self) -> list[MLP]:
        """The members, typed (nn.ModuleList yields plain modules)."""
        return [member for member in self.members if isinstance(member, MLP)]

    def scores_and_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The log of the members' mean softmax, and their features side by side: each member's
        hidden units mean something only within that member, so they are not averaged."""
        outputs = [member.scores_and_features(pixels) for member in self.mlps()]
        mean = torch.stack([torch.softmax(scores, 1) for scores, _ in outputs]).mean(0)
        scores = mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
        return scores, torch.cat([features for _, features in outputs], 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], [N, S*S] or [N, S, S] -> log of the members' mean softmax [N, 10]."""
        return self.scores_and_features(pixels)[0]


Classifier = MLP | Committee  # what evaluate and predict score: [N, S*S] pixels -> 10 outputs


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside, restored after. Scoring is a few big matmuls, and on the
    shared 2-core machine two threads took 4x the CPU time of one for the same outputs: they spin
    while they wait for a core (docs/benchmarks.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def model_outputs(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Raw model outputs for uint8 images [N, S, S], in batches to bound memory."""
    model.eval()
    return torch.cat([model(batch.float().div_(255)) for batch in images.split(batch_size)])


def checkpoint_payload(model: MLP, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plain tensors and builtins only, so that `torch.load(weights_only=True)` reads it."""
    arch = asdict(model.arch)
    arch["hidden"] = list(arch["hidden"])
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "preprocess": {
            "image_size": model.arch.image_size,
            "mean": float(model.mean),
            "std": float(model.std),
            "pixel_scale": "pixels / 255, then (x - mean) / std inside the model",
        },
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    return payload


def save_checkpoint(path: Path, model: MLP, extra: dict[str, Any] | None = None) -> None:
    save_payload(path, checkpoint_payload(model, extra))


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    atomic.write_bytes(path, torch_bytes(payload))


def torch_bytes(obj: Any) -> bytes:
    """`torch.save` of `obj` into memory: the same bytes whenever the content is the same.

    Saved to a path, torch names the zip's top folder after the file, and atomic writes save to a
    random temp name, so every save of the same weights gave other bytes and dvc.lock's md5 of
    model.pt never matched. Saved to a buffer, the folder is always `archive` (torch.load reads
    either). The archive's other per-save record, `.data/serialization_id`, is no clock or random
    number: torch derives it from the records' names and CRC-32s (tests/test_model.py checks
    that two saves, apart in time and path, are byte-identical).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a file carrying pickled code objects is refused, never run."""
    if not Path(path).is_file():
        raise PipelineError(f"{path} not found; {paths.run_first(path, 'train')}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PipelineError(
            f"{path} holds pickled Python objects that weights_only loading refuses ({first}); "
            "only load checkpoints written by this pipeline"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(
            f"{path} is not a readable checkpoint ({reason}); retrain or restore it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") not in (
        CHECKPOINT_FORMAT,
        COMMITTEE_FORMAT,
    ):
        raise PipelineError(
            f"{path} is not a {CHECKPOINT_FORMAT} checkpoint; retrain with this pipeline"
        )
    return payload


def classifier_from_checkpoint(payload: dict[str, Any]) -> Classifier:
    """One MLP, or a committee of them (the committee stage's checkpoint), in eval mode."""
    if payload["format"] == COMMITTEE_FORMAT:
        return Committee([model_from_checkpoint(member) for member in payload["members"]]).eval()
    return model_from_checkpoint(payload)


def model_from_checkpoint(payload: dict[str, Any]) -> MLP:
    if payload.get("format") == COMMITTEE_FORMAT:
        raise PipelineError(
            "this is a committee checkpoint; only evaluate, report and predict read "
            "committees, the single-model stages need one MLP (models/model.pt)"
        )
    arch = dict(payload["arch"])
    arch["hidden"] = tuple(arch["hidden"])
    model = MLP(Architecture(**arch), payload["preprocess"]["mean"], payload["preprocess"]["std"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def checkpoint_field(payload: dict[str, Any], key: str, path: Path) -> Any:
    """What train recorded beside the weights (e.g. "loss", "epoch") of the checkpoint at `path`."""
    if key not in payload:
        raise PipelineError(
            f"{path} lacks the {key!r} entry train records; {paths.rerun(path, 'train')}"
        )
    return payload[key]
