"""The one reader and the one writer of each file a stage hands to another (paths.py says where).

A format is defined here only, so a producer and its consumers cannot drift apart, and test
fixtures write through the same functions. Writers are atomic (pipeline/atomic.py); readers check
what their callers rely on and raise PipelineError naming the file and the stage that rewrites it.
The model checkpoint's format lives in model.py and the resume state's in resume.py.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from pipeline import atomic
from pipeline.errors import PipelineError
from pipeline.paths import (
    CHECKSUMS_FILE,
    DATA_VALIDATION_FILE,
    GRAD_NORMS_FILE,
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    OOD_REFERENCE_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
    PROMOTION_FILE,
    SPLIT_SUMMARY_FILE,
    STATS_FILE,
    TRAIN_HISTORY_FILE,
    UPSTREAM_FILE,
    rerun,
    run_first,
)

if TYPE_CHECKING:
    import pandas as pd  # imported where a table is read: download, stats and split need none

# No wall time (the rows' `seconds`): dvc.lock hashes the file, so the same training must give the
# same bytes. Epoch times go to MLflow (epoch_seconds, train_seconds) and models/last.pt instead.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr")
PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")
PREDICTION_COLUMNS = ("index", "actual", "predicted", "confidence")
METRIC_KEYS = (
    "test_accuracy",
    "test_loss",
    "test_errors",
    "valid_accuracy",
    "valid_loss",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "test_ece",
    "test_nll",
)


class _FileChecksums(TypedDict):
    md5: str
    sha256: str
    bytes: int
    source: str
    checked_against: str


class FileChecksums(_FileChecksums, total=False):
    upstream: dict[str, str]  # the source's fingerprint when fetched (custom, unpinned files only)


class Checksums(TypedDict):
    dataset: str
    files: dict[str, FileChecksums]


class Stats(TypedDict):
    mean: float
    std: float
    image_size: int
    count: int


class RunReference(TypedDict):
    run_id: str
    experiment_id: str


def _load(path: Path, stage: str, kind: str, parse: Any) -> Any:
    """`parse(path)`; a missing or unreadable file becomes one line naming the stage to run."""
    try:
        return parse(path)
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing; {run_first(path, stage)}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(
            f"{path} is not a readable {kind} ({reason}); {rerun(path, stage)}"
        ) from None


def _json_object(path: Path, stage: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    content = _load(path, stage, "JSON file", lambda p: json.loads(Path(p).read_text()))
    if not isinstance(content, dict):
        raise PipelineError(
            f"{path} must hold a JSON object, got {type(content).__name__}; {rerun(path, stage)}"
        )
    missing = [key for key in keys if key not in content]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}; {rerun(path, stage)}")
    return content


def _table(path: Path, stage: str, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    table = _load(path, stage, "CSV file", pd.read_csv)
    missing = [column for column in columns if column not in table.columns]
    if missing or table.empty:
        what = f"lacks columns {', '.join(missing)}" if missing else "has no rows"
        raise PipelineError(f"{path} {what}; {rerun(path, stage)}")
    return table


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# ---- upstream: data/upstream.json (python -m pipeline upstream; download depends on it) -----


def write_upstream(files: dict[str, dict[str, str]], path: Path = UPSTREAM_FILE) -> None:
    atomic.write_json(path, {"files": files})


def read_upstream(path: Path = UPSTREAM_FILE) -> dict[str, dict[str, str]]:
    """Each unpinned file's fingerprint at its source; empty when none was taken (nothing to
    compare)."""
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


# ---- download: data/raw/checksums.json ------------------------------------------------------


def write_checksums(record: Checksums, path: Path = CHECKSUMS_FILE) -> None:
    atomic.write_json(path, record)


def read_checksums(path: Path = CHECKSUMS_FILE) -> Checksums:
    content = _json_object(path, "download", ("dataset", "files"))
    files = content["files"]
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise PipelineError(
            f"{path} must map each file name to its checksums; {rerun(path, 'download')}"
        )
    return cast(Checksums, content)


# ---- stats: data/stats.json -----------------------------------------------------------------


def write_stats(stats: Stats, path: Path = STATS_FILE) -> None:
    atomic.write_json(path, stats)


def read_stats(path: Path = STATS_FILE) -> dict[str, Any]:
    """Any JSON object: the validate stage judges the values, and train checks what it uses."""
    return _json_object(path, "stats")


# ---- split: data/split/{train,valid}.npy and summary.json ----------------------------------


def write_index(path: Path, index: np.ndarray) -> None:
    """An .npy file without pickles; the same array gives the same bytes."""
    buffer = io.BytesIO()
    np.save(buffer, index, allow_pickle=False)
    atomic.write_bytes(path, buffer.getvalue())


def read_index(path: Path, limit: int | None = None) -> np.ndarray:
    """A split's int64 index array; given `limit` (the training set size) it must also be
    non-empty and hold valid positions. The validate stage passes none: it reports bad indices."""
    index = _load(path, "split", ".npy file", lambda p: np.load(p, allow_pickle=False))
    if not isinstance(index, np.ndarray) or index.ndim != 1 or index.dtype.kind not in "iu":
        shape = (
            f"{index.dtype} {index.shape}"
            if isinstance(index, np.ndarray)
            else type(index).__name__
        )
        raise PipelineError(
            f"{path} must hold a 1-D integer index array, got {shape}; {rerun(path, 'split')}"
        )
    if limit is not None:
        if len(index) == 0:
            raise PipelineError(f"{path} holds no indices; {rerun(path, 'split')}")
        if index.min() < 0 or index.max() >= limit:
            raise PipelineError(
                f"{path} holds indices outside 0..{limit - 1} (the training set size); "
                f"{rerun(path, 'split')} on the current data"
            )
    return index.astype(np.int64)


def write_split_summary(summary: dict[str, Any], path: Path = SPLIT_SUMMARY_FILE) -> None:
    """For people and `dvc diff`; no stage reads it."""
    atomic.write_json(path, summary)


# ---- validate: reports/data_validation.json -------------------------------------------------


def write_validation(report: dict[str, Any], path: Path = DATA_VALIDATION_FILE) -> None:
    atomic.write_json(path, report)


def read_validation(path: Path = DATA_VALIDATION_FILE) -> dict[str, Any]:
    return _json_object(path, "validate", ("success", "counts", "expectations"))


# ---- train: models/mlflow_run.json, reports/train_history.csv and grad_norms.csv ------------


def write_run_reference(run_id: str, experiment_id: str, path: Path = MLFLOW_RUN_FILE) -> None:
    atomic.write_json(path, {"run_id": run_id, "experiment_id": experiment_id})


def read_run_reference(path: Path = MLFLOW_RUN_FILE) -> RunReference:
    content = _json_object(path, "train", ("run_id", "experiment_id"))
    if not all(isinstance(content[key], str) for key in ("run_id", "experiment_id")):
        raise PipelineError(
            f"{path} must give run_id and experiment_id as strings; {rerun(path, 'train')}"
        )
    return cast(RunReference, content)


def write_history(rows: Sequence[dict[str, Any]], path: Path = TRAIN_HISTORY_FILE) -> None:
    """One row per epoch, the columns of HISTORY_COLUMNS; other keys of a row (its wall-clock
    `seconds`) are left out."""
    kept = [{column: row[column] for column in HISTORY_COLUMNS} for row in rows]
    atomic.write_text(path, _csv_text(kept, HISTORY_COLUMNS))


def read_history(path: Path = TRAIN_HISTORY_FILE) -> pd.DataFrame:
    return _table(path, "train", HISTORY_COLUMNS)


def write_grad_norms(rows: Sequence[dict[str, Any]], path: Path = GRAD_NORMS_FILE) -> None:
    """One row per epoch: `epoch`, then one column per layer, in the first row's order."""
    layers = [key for key in rows[0] if key != "epoch"] if rows else []
    atomic.write_text(path, _csv_text(rows, ["epoch", *layers]))


def read_grad_norms(path: Path = GRAD_NORMS_FILE) -> pd.DataFrame:
    table = _table(path, "train", ("epoch",))
    if table.shape[1] < 2:
        raise PipelineError(f"{path} has no layer columns; {rerun(path, 'train')}")
    return table


# ---- evaluate: reports/metrics.json, per_class.csv, predictions.csv -------------------------


def write_metrics(metrics: dict[str, float], path: Path = METRICS_FILE) -> None:
    atomic.write_json(path, metrics)


def read_metrics(path: Path = METRICS_FILE) -> dict[str, float]:
    """Every metric evaluate writes, each a number."""
    content = _json_object(path, "evaluate")
    bad = [
        key
        for key in METRIC_KEYS
        if isinstance(content.get(key), bool) or not isinstance(content.get(key), (int, float))
    ]
    if bad:
        raise PipelineError(f"{path} has no numeric {', '.join(bad)}; {rerun(path, 'evaluate')}")
    return content


def write_per_class(table: pd.DataFrame, path: Path = PER_CLASS_FILE) -> None:
    atomic.write_text(
        path, table.to_csv(index=False, columns=list(PER_CLASS_COLUMNS), float_format="%.6f")
    )


def read_per_class(path: Path = PER_CLASS_FILE) -> pd.DataFrame:
    return _table(path, "evaluate", PER_CLASS_COLUMNS)


def write_predictions(table: pd.DataFrame, path: Path = PREDICTIONS_FILE) -> None:
    atomic.write_text(path, table.to_csv(index=False, columns=list(PREDICTION_COLUMNS)))


def read_predictions(path: Path = PREDICTIONS_FILE) -> pd.DataFrame:
    return _table(path, "evaluate", PREDICTION_COLUMNS)


# ---- train: models/ood_reference.json (pipeline/serving/ood.py gives it meaning and reads it)
# -------


def write_ood_reference(reference: dict[str, Any], path: Path = OOD_REFERENCE_FILE) -> None:
    atomic.write_json(path, reference)


# ---- promote: reports/promotion.json --------------------------------------------------------


def write_promotion(record: dict[str, Any], path: Path = PROMOTION_FILE) -> None:
    """For people and git history; no stage reads it."""
    atomic.write_json(path, record)
