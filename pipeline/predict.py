"""`python -m pipeline predict PATH... [--model FILE|URI] [--json]`: the digit in each image, with
confidence.

Inputs are PNG/JPEG (or any format Pillow reads) of any size and mode, or IDX image files (each
image in one is a prediction). Pictures are brought to the form the model was trained on:
grayscale, bright digit on a dark background (a light background is inverted), and, unless the
picture is already 28x28 like an MNIST image, the digit is cropped to its bounding box, scaled into
a 20x20 box and centred by its centre of mass in a 28x28 frame, as MNIST itself was made. Then the
same antialiased resize as training brings it to the model's image size; the model normalises.

Each prediction also says whether the input's pixel statistics lie far from the training digits'
("ood", pipeline/ood.py), against the reference evaluate stored with the model: an MLP gives
confident answers to noise too. A bad input gets a one-line error naming it; the other inputs are
still predicted and the exit status is 1. Nothing pickled is ever loaded: checkpoints are read with
weights_only=True, and MLflow models (train logs them as pt2 graphs) only after MLflow has checked
them pickle-free.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline import tracking
from pipeline.data import resize
from pipeline.errors import PipelineError
from pipeline.idx import is_idx, parse_idx
from pipeline.losses import probabilities
from pipeline.model import (
    checkpoint_field,
    classifier_from_checkpoint,
    load_checkpoint,
    model_outputs,
)
from pipeline.ood import OodReference, check, read_reference
from pipeline.paths import OOD_REFERENCE_FILE

if TYPE_CHECKING:  # mlflow is imported only where it is used, to keep start-up short
    from mlflow.models.model import ModelInfo

MLFLOW_SCHEMES = ("models:/", "runs:/")
MNIST_SIZE = 28
MNIST_BOX = 20
# Pixels above this share of the digit's brightness range count as ink for the bounding box;
# lower values let paper grain and JPEG noise widen the box.
INK_THRESHOLD = 0.3
# A picture whose brightest ink is within this many grey levels of its background holds no digit.
MIN_CONTRAST = 24
BATCH_SIZE = 4096
# Set for the rest of the predict process before MLflow loads a model: with pickles disallowed
# MLflow loads only pt2 archives it has checked to be pickle-free (tracking.configure, which it
# calls too, hides the download progress bars).
MLFLOW_ENVIRONMENT = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


@dataclass(frozen=True)
class Predictor:
    model: nn.Module  # pixels in [0, 1], [N, S, S] -> class scores
    image_size: int
    loss: str  # how the outputs turn into probabilities (pipeline.losses)
    reference: OodReference | None = (
        None  # the training digits' pixel statistics; None: not checked
    )


@dataclass(frozen=True)
class Prediction:
    input: str
    index: int | None  # position inside an IDX file, None for a picture
    label: int
    confidence: float
    ood: bool | None = None  # None when the model has no off-distribution reference
    ood_reason: str | None = None

    @property
    def name(self) -> str:
        return self.input if self.index is None else f"{self.input}[{self.index}]"


def load_predictor(spec: str) -> Predictor:
    if spec.startswith(MLFLOW_SCHEMES):
        return load_logged(spec)
    payload = load_checkpoint(Path(spec))
    loss = str(checkpoint_field(payload, "loss", Path(spec)))
    model = classifier_from_checkpoint(payload)  # one MLP or a committee
    reference = read_reference(Path(spec).with_name(OOD_REFERENCE_FILE.name))
    return Predictor(model, model.image_size, loss, reference)


class ExportedMLP(nn.Module):
    """The pt2 graph train logs: it takes [N, S*S] only, and was traced in eval mode for good."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> ExportedMLP:
        return self  # an exported graph cannot switch modes; its dropout is already off

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.graph(pixels.flatten(1))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def signature_image_size(info: ModelInfo) -> int | None:
    """S from the logged input signature [-1, S*S]; None if the model takes anything else."""
    inputs = info.signature.inputs.to_dict() if info.signature else []
    shape = inputs[0].get("tensor-spec", {}).get("shape") if len(inputs) == 1 else None
    if not shape or len(shape) != 2 or shape[-1] <= 0:
        return None
    size = math.isqrt(shape[-1])
    return size if size * size == shape[-1] else None


def load_logged(uri: str) -> Predictor:
    """A model from the MLflow registry or a run; MLflow is set to refuse anything pickled in it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.update(MLFLOW_ENVIRONMENT)
    tracking.configure()
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as exc:
        raise PipelineError(
            f"cannot find {uri} in {tracking.tracking_uri()} ({first_line(exc)}); check the name "
            "and alias or version (e.g. models:/mnist-mlp@champion) and MLFLOW_TRACKING_URI"
        ) from None
    try:
        graph = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as exc:
        raise PipelineError(
            f"cannot load {uri} ({first_line(exc)}); only models logged by this pipeline's train "
            "stage load"
        ) from None
    size = signature_image_size(info)
    if size is None:
        raise PipelineError(
            f"{uri} has no [-1, S*S] tensor signature, so it is not this pipeline's MLP; pick "
            "another version"
        )
    loss = (
        mlflow.MlflowClient().get_run(info.run_id).data.params.get("train.loss")
        if info.run_id
        else None
    )
    if loss is None:
        raise PipelineError(
            f"{uri} comes from a run without the train.loss param; log it with the train stage"
        )
    return Predictor(ExportedMLP(graph), size, loss, logged_reference(info.run_id))


def logged_reference(run_id: str) -> OodReference | None:
    """The off-distribution reference evaluate logged in the model's run, if it did."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"evaluation/{OOD_REFERENCE_FILE.name}"
        )
    except (MlflowException, OSError):
        return None
    return read_reference(Path(path))


def border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def decode_picture(data: bytes) -> np.ndarray:
    """Any Pillow-readable picture -> float grey levels 0..255 [H, W]; transparency shows white
    paper."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greys: scale by the format's range, which convert("L") would clip.
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") else max(float(grey.max()), 1.0)
        return np.clip(grey / top * 255.0, 0, 255)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("L"), dtype=np.float64)


def mnist_polarity(grey: np.ndarray) -> np.ndarray:
    """Bright digit on dark ground: a picture whose border is mostly light is inverted."""
    return 255.0 - grey if np.median(border(grey)) > 127.5 else grey


def fit_digit(ink: np.ndarray) -> np.ndarray:
    """Crop to the digit, scale it into 20x20 keeping aspect, centre its mass in 28x28 (uint8)."""
    background = float(np.median(border(ink)))
    peak = float(ink.max())
    if peak - background < MIN_CONTRAST:
        raise PipelineError(
            "no digit found (the picture is blank or has almost no contrast); crop it to one digit"
        )
    stretched = np.clip((ink - background) / (peak - background), 0.0, 1.0) * 255.0
    rows, cols = np.nonzero(stretched >= INK_THRESHOLD * 255.0)
    crop = stretched[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    box = resize(torch.from_numpy(square.round().astype(np.uint8))[None], MNIST_BOX)[0].numpy()
    weights = box.astype(np.float64)
    grid = np.arange(MNIST_BOX)
    centre_row = (weights.sum(1) @ grid) / weights.sum()
    centre_col = (weights.sum(0) @ grid) / weights.sum()
    frame = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    slack = MNIST_SIZE - MNIST_BOX
    row = int(np.clip(round((MNIST_SIZE - 1) / 2 - centre_row), 0, slack))
    col = int(np.clip(round((MNIST_SIZE - 1) / 2 - centre_col), 0, slack))
    frame[row : row + MNIST_BOX, col : col + MNIST_BOX] = box
    return frame


def picture_to_mnist(grey: np.ndarray) -> np.ndarray:
    """Grey levels [H, W] -> uint8 28x28 in MNIST form; a 28x28 picture counts as already framed."""
    ink = mnist_polarity(grey)
    if ink.shape == (MNIST_SIZE, MNIST_SIZE):
        return np.clip(ink.round(), 0, 255).astype(np.uint8)
    return fit_digit(ink)


def idx_images(data: bytes) -> np.ndarray:
    try:
        array = parse_idx(data, "IDX data")
    except PipelineError as exc:
        # parse_idx's own advice is about the downloaded dataset; keep only what is wrong.
        raise PipelineError(f"{str(exc).split('; ')[0]}; pass an intact IDX images file") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.dtype != np.uint8:
        raise PipelineError(
            f"holds {array.dtype} data of shape {array.shape}, not uint8 images [N, H, W]; pass "
            "an images file (e.g. t10k-images-idx3-ubyte.gz), not a labels file"
        )
    if 0 in array.shape[1:]:  # resizing them would fail, and take the other inputs down with it
        raise PipelineError(
            f"holds empty images of {array.shape[1]}x{array.shape[2]} pixels, so there is nothing "
            "to predict; pass an IDX images file whose images have at least one pixel"
        )
    return array


def read_input(path: str) -> tuple[list[int | None], np.ndarray]:
    """One file -> (IDX positions or [None], uint8 images [N, H, W]) in MNIST form, before the
    resize."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read it ({exc.strerror or exc}); check the path") from None
    if is_idx(data):
        images = idx_images(data)
        return list(range(len(images))), images
    from PIL import Image, UnidentifiedImageError

    try:
        grey = decode_picture(data)
    except UnidentifiedImageError:
        raise PipelineError(
            "not a picture Pillow can read (PNG, JPEG, ...) nor an IDX file; pass digit images"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(
            f"damaged or unsupported picture ({exc}); re-export it as PNG"
        ) from None
    return [None], picture_to_mnist(grey)[None]


def predict_images(predictor: Predictor, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 MNIST-form images [N, H, W] -> (labels, confidences), resized as training resizes."""
    pixels = resize(torch.from_numpy(np.ascontiguousarray(images)), predictor.image_size)
    outputs = model_outputs(predictor.model, pixels, BATCH_SIZE)
    labels = outputs.argmax(1)
    confidence = probabilities(outputs, predictor.loss).gather(1, labels[:, None])[:, 0]
    return labels, confidence


def predict_file(predictor: Predictor, path: str) -> list[Prediction]:
    positions, images = read_input(path)
    labels, confidence = predict_images(predictor, images)
    flags = (
        check(torch.from_numpy(np.ascontiguousarray(images)), predictor.reference)
        if predictor.reference
        else None
    )
    return [
        Prediction(
            path,
            index,
            int(label),
            float(conf),
            flags[i].ood if flags else None,
            flags[i].reason if flags else None,
        )
        for i, (index, label, conf) in enumerate(
            zip(positions, labels.tolist(), confidence.tolist(), strict=True)
        )
    ]


def format_prediction(prediction: Prediction, as_json: bool) -> str:
    if as_json:
        fields = {
            "input": prediction.input,
            "index": prediction.index,
            "label": prediction.label,
            "confidence": round(prediction.confidence, 6),
            "ood": prediction.ood,
        }
        if prediction.ood:
            fields["ood_reason"] = prediction.ood_reason
        return json.dumps(fields)
    line = f"{prediction.name}: {prediction.label} (confidence {prediction.confidence:.4f})"
    return line + (f"; off-distribution: {prediction.ood_reason}" if prediction.ood else "")


def run(paths: list[str], model: str, as_json: bool) -> int:
    """The command (pipeline/__main__.py parses its arguments): exit status 0 when every input
    was predicted, else 1."""
    try:
        predictor = load_predictor(model)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        failed = predict_all(predictor, paths, as_json)
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped reading: stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if failed:
        print(
            f"error: {failed} of {len(paths)} inputs could not be predicted (see above)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def predict_all(predictor: Predictor, paths: list[str], as_json: bool) -> int:
    """Print each input's predictions as they come, errors to stderr; returns how many failed."""
    if predictor.reference is None:
        print(
            "warning: this model has no off-distribution reference (evaluate writes it: "
            'dvc repro evaluate), so inputs are not checked ("ood": null)',
            file=sys.stderr,
        )
    failed = 0
    for path in paths:
        try:
            predictions = predict_file(predictor, path)
        except PipelineError as exc:
            failed += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        for prediction in predictions:
            print(format_prediction(prediction, as_json), flush=True)
    return failed
