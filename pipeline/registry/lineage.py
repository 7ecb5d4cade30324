"""What a run was trained and tested on, recorded in MLflow: dataset inputs, the data checks and
the SHA-256 of the checkpoint it wrote.

Each split is logged with `mlflow.log_input` as `<dataset>-train|valid|test`, so the run list's
Dataset column and the run page name it. Its digest comes from the raw files' checksums
(data/raw/checksums.json), the image size and, for train and valid, the bytes of the split's
index file: the same data always shows the same digest, and train and valid differ.
"""

from __future__ import annotations

import hashlib
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import artifacts
from pipeline.artifacts import Checksums
from pipeline.data.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.errors import PipelineError
from pipeline.paths import (
    DATA_DOCS_DIR,
    DATA_VALIDATION_FILE,
    RAW_DIR,
    TRAIN_INDEX_FILE,
    VALID_INDEX_FILE,
)
from pipeline.progress import log

SPLITS = ("train", "valid", "test")
CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}
SPLIT_FILES = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS),
    "valid": (TRAIN_IMAGES, TRAIN_LABELS),
    "test": (TEST_IMAGES, TEST_LABELS),
}
INDEX_FILES = {"train": TRAIN_INDEX_FILE, "valid": VALID_INDEX_FILE}
DIGEST_CHARS = 16  # MLflow stores at most 36
VALIDATION_ARTIFACTS = "data_validation"
CHECKPOINT_TAG = "model.sha256"
NOT_VALIDATED = "not validated"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def split_digest(split: str, checksums: Checksums, image_size: int) -> str:
    """Raw files' MD5s + image size (+ the index file's bytes for train and valid)."""
    parts = [f"{name}:{checksums['files'][name]['md5']}" for name in SPLIT_FILES[split]]
    parts.append(f"image_size:{image_size}")
    if split in INDEX_FILES:
        parts.append(f"index:{hashlib.sha256(INDEX_FILES[split].read_bytes()).hexdigest()}")
    return _short("\n".join(parts))


def data_digest(checksums: Checksums, image_size: int) -> str:
    """One digest for all three splits: what the version tags and the run description quote."""
    return _short("\n".join(split_digest(split, checksums, image_size) for split in SPLITS))


def source_of(split: str, checksums: Checksums) -> str:
    """Where the split's image file came from (download records it without credentials), else its
    DVC path."""
    name = SPLIT_FILES[split][0]
    source = str(checksums["files"][name].get("source", ""))
    parts = urllib.parse.urlsplit(source)
    if (
        ("://" in source or source.startswith("/"))
        and parts.username is None
        and parts.password is None
    ):
        return source
    return str(RAW_DIR / name)


def log_checkpoint(path: Path) -> str:
    """Tag the active run with the checkpoint file's SHA-256, so that a checkout restored from git
    and DVC can prove it holds the very file this run trained; returns it."""
    import mlflow

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mlflow.set_tag(CHECKPOINT_TAG, digest)
    return digest


def log_split(
    split: str, images: np.ndarray, labels: np.ndarray, checksums: Checksums, image_size: int
) -> None:
    """Log one split, as uint8 pixels [N, S*S] with its labels, to the active run."""
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    with warnings.catch_warnings():  # a local path matches two equivalent source classes
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = from_numpy(
            images.reshape(len(images), -1),
            targets=labels,
            source=source_of(split, checksums),
            name=f"{checksums['dataset']}-{split}",
            digest=split_digest(split, checksums, image_size),
        )
    mlflow.log_input(dataset, context=CONTEXTS[split])


def log_data_validation(
    counts: dict[str, int], report_file: Path = DATA_VALIDATION_FILE, docs_dir: Path = DATA_DOCS_DIR
) -> str:
    """Tag the run with validate's outcome and log its JSON and Data Docs under data_validation/.

    A report that is missing, or counts other splits than the ones trained on, is no validation
    of this data: the tag then says "not validated". train calls this after the model is
    stored, so an artifact store that is down fails there, with its own message; an upload that
    fails here only costs these copies (a warning), since the tag and metrics already say it.
    Returns the tag's value.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    report: dict[str, Any] | None
    try:
        report = artifacts.read_validation(report_file)
        checked = {split: report["counts"][split] for split in counts}
    except (PipelineError, KeyError, TypeError):
        report, checked = None, None
    if report is None or checked != counts:
        why = (
            "is missing or unreadable"
            if report is None
            else f"counts {checked}, not the {counts} trained on"
        )
        log(
            f"warning: {report_file} {why}: this run is tagged "
            f"data_validation.success={NOT_VALIDATED!r}"
        )
        mlflow.set_tag("data_validation.success", NOT_VALIDATED)
        return NOT_VALIDATED
    entries = report["expectations"]
    success = str(bool(report["success"])).lower()
    mlflow.set_tag("data_validation.success", success)
    mlflow.log_metrics(
        {
            "data_validation.expectations_passed": sum(bool(e.get("success")) for e in entries),
            "data_validation.expectations_total": len(entries),
        }
    )
    try:
        mlflow.log_artifact(str(report_file), VALIDATION_ARTIFACTS)
        if docs_dir.is_dir():
            mlflow.log_artifacts(str(docs_dir), f"{VALIDATION_ARTIFACTS}/{docs_dir.name}")
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log(f"warning: could not upload {report_file} and the Data Docs to MLflow ({first})")
    return success
