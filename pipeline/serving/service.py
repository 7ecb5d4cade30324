"""The labelled answer: one code path from pixel rows or picture files to digits, probabilities and
off-distribution flags, for `predict` and for the served model (pipeline/serving/served_model.py).

train exports the model as a pt2 graph that takes pixel rows [N, S*S] in [0, 1] and returns the 10
class probabilities (as its loss reads its outputs, pipeline/learner/losses.py) and a feature
vector: the last hidden layer's activations, a committee's members' side by side. The graph, the
off-distribution reference train fitted and this package are what MLflow stores; nothing in them is
pickled.

A request is a list of rows, each either S*S pixel values in [0, 1] or a picture file (PNG, JPEG)
as a base64 string, which goes through predict's preprocessing (pipeline/serving/pictures.py). With
`packed` every row is instead the base64 of its S*S pixels as uint8 (0-255) or little-endian
float32 (in [0, 1]): a 256-image request is then 256 short strings, not 200,000 JSON numbers that
MLflow parses one by one and we convert one by one (docs/benchmarks.md#serving). A bad request is
refused whole, with one line naming the bad rows by index and the fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic
import torch
from torch import nn

from pipeline.data.loading import resize
from pipeline.errors import PipelineError
from pipeline.serving import pictures
from pipeline.serving.drift import Reference as MonitorReference
from pipeline.serving.drift import build_reference
from pipeline.serving.ood import OodReference, as_rows, fit_reference, flag_rows, read_reference
from pipeline.serving.records import Recorder, recorder

if TYPE_CHECKING:
    from pipeline.learner.model import Classifier
    from pipeline.paths import Layout

# The served contract, a registered version's `contract` metadata: labelled answers to pixel rows
# or pictures. Before it, versions were bare pt2 graphs answering 10 raw scores per row.
CONTRACT = "labelled-answers/1"
MAX_ROWS = 1024  # per request (docs/serving.md); a proxy bounds the bytes, see there
GRAPH_FILE = "graph.pt2"
REFERENCE_FILE = "ood_reference.json"
MONITOR_REFERENCE_FILE = "monitor_reference.npz"
SHOWN_ROWS = 10  # a message names at most this many rows of each problem
DIGITS = 6  # decimals of the probabilities answered
# {"params": {"packed": ...}}: each row the base64 of its S*S pixels of this type, row by row
PACKED: dict[str, np.dtype] = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}
NOT_PACKED = "none"  # the param's default: rows are pixel values or pictures


class Answer(pydantic.BaseModel):
    """One row's answer, as the served model's signature states it
    (pipeline/serving/served_model.py)."""

    digit: int
    probability: float
    probabilities: list[float]
    ood: bool | None = None  # None: a model without an off-distribution reference
    ood_reason: str | None = None
    features: list[float] | None = None  # with {"params": {"features": true}}


class RequestError(PipelineError):
    """A request the service refuses (HTTP 400); the message names the rows and the fix."""


class ServingGraph(nn.Module):
    """What train exports: pixel rows [N, S*S] in [0, 1] -> (probabilities [N, 10], features)."""

    def __init__(self, model: Classifier, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pipeline.learner.losses import probabilities

        scores, features = self.model.scores_and_features(rows)
        return probabilities(scores, self.loss), features


def export_graph(model: Classifier, loss: str, image_size: int, path: Path) -> None:
    """torch.export the model's ServingGraph with a free batch size, saved as a pt2 archive."""
    graph = ServingGraph(model, loss).eval()
    example = torch.rand(2, image_size * image_size)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


class LoadedGraph(nn.Module):
    """A loaded pt2 graph, called as its ops with its weights passed in. `ExportedProgram.module()`
    wraps the same ops in per-call input guards and pytree (un)flattening, which cost more than
    the forward pass of one row (docs/benchmarks.md#serving); the rows reaching it are already
    checked (Answerer.request_rows). Same ops, same weights, so the same bytes."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        from torch.export.graph_signature import InputKind, OutputKind

        inputs, outputs = program.graph_signature.input_specs, program.graph_signature.output_specs
        user_inputs = [spec for spec in inputs if spec.kind == InputKind.USER_INPUT]
        if (
            len(user_inputs) != 1
            or inputs[-1] != user_inputs[0]
            or any(spec.kind != OutputKind.USER_OUTPUT for spec in outputs)
        ):
            raise PipelineError(
                "the model's graph does not take one tensor of rows after its weights and return "
                "only outputs; re-export it with this version (retrain or dvc repro)"
            )
        state = {**program.state_dict, **program.constants}
        self.weights = [state[str(spec.target)] for spec in inputs[:-1]]
        self.ops = program.graph_module

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities, features = self.ops(*self.weights, rows)
        return probabilities, features


def load_graph(path: Path) -> nn.Module:
    """The pt2 graph, after MLflow's check that the archive holds no pickle."""
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

    _validate_pt2_archive_is_pickle_free(str(path))
    return LoadedGraph(torch.export.load(str(path)))


@dataclass(frozen=True)
class Answerer:
    graph: nn.Module  # pixel rows [N, S*S] in [0, 1] -> (probabilities [N, 10], features [N, F])
    image_size: int
    reference: OodReference | None  # None: an older local model; inputs are not checked
    recorder: Recorder | None = None  # where each answer is recorded (pipeline/serving/records.py)

    @property
    def row_length(self) -> int:
        return self.image_size * self.image_size

    def rows_from_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 MNIST-form images [N, H, W] -> rows, resized as training resizes."""
        pixels = resize(torch.from_numpy(np.ascontiguousarray(images)), self.image_size)
        return pixels.flatten(1).float().div_(255)

    def request_rows(self, inputs: Any, packed: str = NOT_PACKED) -> torch.Tensor:
        """A request's rows -> float32 [N, S*S]; RequestError naming every bad row."""
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(
                'the request holds no rows; send {"inputs": [row, ...]}, each row '
                f"{self.row_length} pixel values in [0, 1] or a base64 PNG or JPEG"
            )
        if len(inputs) > MAX_ROWS:
            raise RequestError(
                f"the request holds {len(inputs)} rows, more than the limit of {MAX_ROWS}; "
                f"split it into requests of at most {MAX_ROWS} rows"
            )
        if packed != NOT_PACKED:
            return self.packed_rows(inputs, packed)
        if not any(isinstance(row, str) for row in inputs):
            try:  # the common case, at numpy's speed: every row a list of numbers
                rows = np.asarray(inputs, dtype=np.float32)
            except (ValueError, TypeError):
                rows = None
            if rows is not None and rows.shape[1:] == (self.row_length,):
                check_values(rows, range(len(rows)))
                return torch.from_numpy(rows)
        return self.mixed_rows(inputs)

    def packed_rows(self, inputs: list[Any], packed: str) -> torch.Tensor:
        """Rows sent as base64 of their S*S pixels (PACKED): decoded into one array at once."""
        dtype = PACKED.get(packed)
        if dtype is None:
            choices = ", ".join(f'"{name}"' for name in PACKED)
            raise RequestError(
                f'params "packed" is "{packed}"; send {choices}, or leave it out for pixel '
                "values and pictures"
            )
        size = self.row_length * dtype.itemsize
        fix = f"send each image's {self.row_length} pixels as {packed}, row by row, base64-encoded"
        problems: dict[str, list[int]] = {}
        buffers = []
        for index, row in enumerate(inputs):
            try:
                if not isinstance(row, str):
                    raise RequestError(f"not a base64 string; with packed rows {fix}")
                data = decode_base64(row, f"{fix}")
                if len(data) != size:
                    raise RequestError(f"{len(data)} bytes, not {size}; {fix}")
                buffers.append(data)
            except RequestError as exc:
                problems.setdefault(str(exc), []).append(index)
        if problems:
            raise RequestError(describe(problems, len(inputs)))
        pixels = np.frombuffer(b"".join(buffers), dtype).reshape(len(inputs), self.row_length)
        if dtype == np.uint8:  # as training scales its images (rows_from_images)
            return torch.from_numpy(pixels.astype(np.float32) / np.float32(255))
        rows = pixels.astype(np.float32)  # native byte order, and writable
        check_values(rows, range(len(rows)))
        return torch.from_numpy(rows)

    def mixed_rows(self, inputs: list[Any]) -> torch.Tensor:
        """Row by row: pictures decoded, pixel rows checked; every problem named at once."""
        problems: dict[str, list[int]] = {}
        rows = np.zeros((len(inputs), self.row_length), dtype=np.float32)
        pixel_rows, picture_rows, frames = [], [], []
        for index, row in enumerate(inputs):
            try:
                if isinstance(row, str):
                    picture = decode_base64(row, "send the picture file's bytes base64-encoded")
                    frames.append(pictures.to_mnist(picture))
                    picture_rows.append(index)
                    continue
                rows[index] = pixel_row(row, self.row_length)
                pixel_rows.append(index)
            except PipelineError as exc:  # ours, or pictures.to_mnist: not a picture, no digit
                problems.setdefault(str(exc), []).append(index)
        for problem, bad in value_problems(rows[pixel_rows], pixel_rows).items():
            problems.setdefault(problem, []).extend(bad)
        if problems:
            raise RequestError(describe(problems, len(inputs)))
        if frames:  # resized and scaled at once, as training resizes its images
            rows[picture_rows] = self.rows_from_images(np.stack(frames)).numpy()
        return torch.from_numpy(rows)

    @torch.no_grad()
    def answer(self, rows: torch.Tensor, features: bool = False) -> list[dict[str, Any]]:
        """One labelled answer per row: digit, its probability, all 10, the off-distribution
        flag with its reason, and with `features` the feature vector; recorded when there is a
        recorder. numpy turns the batch into Python values in a few calls; only the dicts are
        built row by row."""
        probs, vectors = self.graph(rows)
        digits = probs.numpy().argmax(1)  # before rounding, which could tie two digits
        table = probs.numpy().astype(np.float64).round(DIGITS)
        top = table[np.arange(len(table)), digits].tolist()
        if self.reference:
            flagged, _, reasons = flag_rows(rows.numpy(), self.reference)
            flags: list[bool | None] = flagged.tolist()
        else:
            flags, reasons = [None] * len(table), {}
        answers = [
            {
                "digit": digit,
                "probability": probability,
                "probabilities": row,
                "ood": flag,
                "ood_reason": reasons.get(i),
            }
            for i, (digit, probability, row, flag) in enumerate(
                zip(digits.tolist(), top, table.tolist(), flags, strict=True)
            )
        ]
        if self.recorder:
            self.recorder.write(rows.numpy(), answers, vectors.numpy())
        if features:
            for answer, vector in zip(answers, vectors.tolist(), strict=True):
                answer["features"] = vector
        return answers


def decode_base64(text: str, fix: str) -> bytes:
    """Base64 text (a data: URL too) -> its bytes; RequestError with `fix` if it is not base64."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"not valid base64; {fix}") from None


def pixel_row(row: Any, length: int) -> np.ndarray:
    """One row of pixel values, its length checked; RequestError saying what is wrong."""
    try:
        values = np.asarray(row, dtype=np.float32)
    except (ValueError, TypeError):
        raise RequestError(
            "something other than numbers; send pixel values or a base64 picture"
        ) from None
    if values.ndim != 1 or len(values) != length:
        side = math.isqrt(length)
        got = "x".join(map(str, values.shape)) or "a single number"
        raise RequestError(
            f"{got} values, not {length}; send each {side}x{side} image as one flat row of "
            f"{length} values, row by row"
        )
    return values


def check_values(rows: np.ndarray, indices: Sequence[int]) -> None:
    problems = value_problems(rows, indices)
    if problems:
        raise RequestError(describe(problems, len(rows)))


def value_problems(rows: np.ndarray, indices: Sequence[int]) -> dict[str, list[int]]:
    """Pixel rows must be finite and in [0, 1]: 0-255 values are the commonest client mistake."""
    problems: dict[str, list[int]] = {}
    if not len(rows):
        return problems
    finite = np.isfinite(rows).all(1)
    if not finite.all():
        problems["NaN or infinity; send finite pixel values in [0, 1]"] = [
            indices[int(i)] for i in np.flatnonzero(~finite)
        ]
    outside = finite & ((rows < 0).any(1) | (rows > 1).any(1))
    if outside.any():
        low, high = float(rows[outside].min()), float(rows[outside].max())
        hint = "divide 0-255 values by 255" if low >= 0 and high <= 255 else "send values in [0, 1]"
        problems[f"pixels outside [0, 1] (from {low:g} to {high:g}); {hint}"] = [
            indices[int(i)] for i in np.flatnonzero(outside)
        ]
    return problems


def describe(problems: dict[str, list[int]], total: int) -> str:
    """One line: each problem with the rows that have it, ending with the last problem's fix."""
    parts = []
    for problem, rows in problems.items():
        shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
        more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
        parts.append(f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}: {problem}")
    return f"refused {sum(map(len, problems.values()))} of {total} rows: " + "; ".join(parts)


def answerer_from_artifacts(artifacts: dict[str, str]) -> Answerer:
    """The served model's Answerer from its MLflow artifacts (paths by name), recording under the
    logged model's id, which its MLmodel file holds beside the artifacts."""
    import yaml

    reference = read_reference(Path(artifacts["ood_reference"]))
    if reference is None:
        raise PipelineError("the model's off-distribution reference is missing; retrain it")
    graph = load_graph(Path(artifacts["graph"]))
    mlmodel = Path(artifacts["graph"]).parents[1] / "MLmodel"
    model_id = yaml.safe_load(mlmodel.read_text()).get("model_id") if mlmodel.exists() else None
    return Answerer(
        graph, reference.image_size, reference, recorder(model_id or "unknown", "service")
    )


@dataclass(frozen=True)
class References:
    """What the served model carries besides its graph, fitted by train and committee."""

    ood: OodReference  # flags each input far from the training digits
    monitor: MonitorReference  # what `python -m pipeline monitor` compares records with

    def save(self, layout: Layout) -> None:
        from pipeline import artifacts

        artifacts.write_ood_reference(self.ood.to_dict(), layout.ood_reference)
        self.monitor.save(layout.monitor_reference)


@torch.no_grad()
def fit_references(
    model: Classifier, loss: str, train_images: torch.Tensor, valid_images: torch.Tensor
) -> References:
    """The validation split answered as the service answers: held out from training, so new
    ordinary digits look like it."""
    ood = fit_reference(train_images, valid_images)
    probabilities, features = ServingGraph(model, loss).eval()(
        torch.from_numpy(as_rows(valid_images))
    )
    return References(ood, build_reference(probabilities.numpy(), features.numpy(), ood.quantile))


def write_artifacts(
    model: Classifier, loss: str, references: References, folder: Path
) -> dict[str, str]:
    """The served model's artifacts, written into `folder`: the graph and the references."""
    export_graph(model, loss, references.ood.image_size, folder / GRAPH_FILE)
    (folder / REFERENCE_FILE).write_text(json.dumps(references.ood.to_dict(), indent=2) + "\n")
    references.monitor.save(folder / MONITOR_REFERENCE_FILE)
    return {
        "graph": str(folder / GRAPH_FILE),
        "ood_reference": str(folder / REFERENCE_FILE),
        "monitor_reference": str(folder / MONITOR_REFERENCE_FILE),
    }
