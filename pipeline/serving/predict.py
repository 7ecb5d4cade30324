"""`python -m pipeline predict PATH... [--model FILE|URI] [--json]`: the digit in each image, with
confidence.

Inputs are PNG/JPEG (or any format Pillow reads) of any size and mode, or IDX image files (each
image in one is a prediction). Pictures are brought to MNIST's form (pipeline/serving/pictures.py),
then the same antialiased resize as training brings them to the model's image size, and the rows go
through the same code as the served model's (pipeline/serving/service.py): the same digits,
probabilities and off-distribution flags ("ood", pipeline/serving/ood.py; an MLP gives confident
answers to noise too) for the same files.

A bad input gets a one-line error naming it; the other inputs are still predicted and the exit
status is 1. Nothing pickled is ever loaded: checkpoints are read with weights_only=True, and
MLflow models are loaded as `mlflow models serve` loads them, with pickles refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.data.idx import is_idx, parse_idx
from pipeline.errors import PipelineError
from pipeline.learner.model import checkpoint_field, classifier_from_checkpoint, load_checkpoint
from pipeline.paths import OOD_REFERENCE_FILE
from pipeline.registry import tracking
from pipeline.serving.ood import read_reference
from pipeline.serving.pictures import to_mnist
from pipeline.serving.records import recorder
from pipeline.serving.service import CONTRACT, Answerer, ServingGraph

MLFLOW_SCHEMES = ("models:/", "runs:/")
BATCH_SIZE = 4096
# Set for the rest of the predict process before MLflow loads a model: with pickles disallowed
# MLflow refuses pickled models (ours are models-from-code; tracking.configure, which it calls
# too, hides the download progress bars).
MLFLOW_ENVIRONMENT = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


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


def load_answerer(spec: str) -> Answerer:
    """A checkpoint file, or a registered or logged MLflow model: the same Answerer either way."""
    if spec.startswith(MLFLOW_SCHEMES):
        return load_logged(spec)
    payload = load_checkpoint(Path(spec))
    loss = str(checkpoint_field(payload, "loss", Path(spec)))
    model = classifier_from_checkpoint(payload).eval()  # one MLP or a committee
    reference = read_reference(Path(spec).with_name(OOD_REFERENCE_FILE.name))
    md5 = hashlib.md5(Path(spec).read_bytes()).hexdigest()
    return Answerer(
        ServingGraph(model, loss), model.image_size, reference, recorder(f"md5:{md5}", "predict")
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def its_own_code() -> Iterator[None]:
    """A logged model carries the pipeline package it was logged with, which MLflow puts first on
    sys.path as `mlflow models serve` does; in this process the package is already imported and
    would shadow that copy (a model logged before a module moved would not even load). While the
    model loads, its copy is `pipeline`; then this process's is restored, and the model keeps the
    modules it loaded, so predict answers with the served code."""
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if _in_package(name)}
    try:
        yield
    finally:
        for name in [name for name in sys.modules if _in_package(name)]:
            del sys.modules[name]
        sys.modules.update(ours)


def _in_package(module: str) -> bool:
    return module == "pipeline" or module.startswith("pipeline.")


def load_logged(uri: str) -> Answerer:
    """The served model from the MLflow registry or a run, loaded as `mlflow models serve` loads
    it; MLflow is set to refuse anything pickled in it."""
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
    if (info.metadata or {}).get("contract") != CONTRACT:
        raise PipelineError(
            f"{uri} was logged before the labelled service (it answers raw scores, not "
            f"{CONTRACT}); pick a version registered since, or retrain (dvc repro train)"
        )
    try:
        with its_own_code():
            served = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except (MlflowException, OSError, PipelineError) as exc:
        raise PipelineError(
            f"cannot load {uri} ({first_line(exc)}); only models logged by this pipeline's train "
            "stage load"
        ) from None
    answerer = served.answerer
    if getattr(answerer, "recorder", None):  # the same model's records, marked as predict's
        # (a model logged before records existed has no recorder)
        answerer = replace(answerer, recorder=replace(answerer.recorder, source="predict"))
    return answerer


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
    return [None], to_mnist(data)[None]


def predict_file(answerer: Answerer, path: str) -> list[Prediction]:
    positions, images = read_input(path)
    rows = answerer.rows_from_images(images)
    answers = [answer for batch in rows.split(BATCH_SIZE) for answer in answerer.answer(batch)]
    return [
        Prediction(path, index, a["digit"], a["probability"], a["ood"], a["ood_reason"])
        for index, a in zip(positions, answers, strict=True)
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
        answerer = load_answerer(model)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        failed = predict_all(answerer, paths, as_json)
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


def predict_all(answerer: Answerer, paths: list[str], as_json: bool) -> int:
    """Print each input's predictions as they come, errors to stderr; returns how many failed."""
    if answerer.reference is None:
        print(
            "warning: this model has no off-distribution reference (train writes it: "
            'dvc repro train), so inputs are not checked ("ood": null)',
            file=sys.stderr,
        )
    failed = 0
    for path in paths:
        try:
            predictions = predict_file(answerer, path)
        except PipelineError as exc:
            failed += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        for prediction in predictions:
            print(format_prediction(prediction, as_json), flush=True)
    return failed
