"""What the champion is asked: a record of every answer the served model and `predict` give.

The store is Parquet, partitioned by day (`<root>/date=YYYY-MM-DD/`), one file per answered
request, written whole under a name no other writer uses (the time, the process id and a random
part): several server workers never share a file, so nothing is interleaved, and there is no
queue to drop or lose on a kill. `$MNIST_RECORDS` names the root, a folder or
`s3://bucket/prefix` (with `$MLFLOW_S3_ENDPOINT_URL` for an S3-compatible store), so a scheduled
job on another machine reads what every server wrote; unset, it is `records/` under the current
folder, and `off` records nothing. MLflow traces were the other candidate; their asynchronous
queue drops traces when full and loses what is queued on a kill.

Each record: the time, the model (its MLflow model_id, or `md5:` of a checkpoint file), who
answered (service or predict), the digit, its probability, the off-distribution flag and the
feature vector (the last hidden layer, pipeline/serving/service.py). Pixels only with
`$MNIST_RECORDS_PIXELS=1`, for labelling later.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.progress import log

RECORDS_ENV = "MNIST_RECORDS"
PIXELS_ENV = "MNIST_RECORDS_PIXELS"
DEFAULT_ROOT = "records"
OFF = "off"


@dataclass(frozen=True)
class Recorder:
    filesystem: Any  # pyarrow.fs.FileSystem
    root: str  # the store's root inside that filesystem
    model: str
    source: str  # "service" or "predict"
    pixels: bool = False

    def write(
        self, rows: np.ndarray, answers: list[dict[str, Any]], features: np.ndarray
    ) -> str | None:
        """One file of these answers' records; its path, or None when the store refused it (one
        line on stderr: an answer is not withheld because monitoring cannot store it)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        now = datetime.now(timezone.utc)
        columns: dict[str, Any] = {
            "time": pa.array([now] * len(answers), pa.timestamp("us", tz="UTC")),
            "model": [self.model] * len(answers),
            "source": [self.source] * len(answers),
            "digit": pa.array([a["digit"] for a in answers], pa.int8()),
            "probability": pa.array([a["probability"] for a in answers], pa.float32()),
            "ood": [a["ood"] for a in answers],
            "features": pa.FixedSizeListArray.from_arrays(
                pa.array(features.astype(np.float32).ravel()), features.shape[1]
            ),
        }
        if self.pixels:
            columns["pixels"] = pa.FixedSizeListArray.from_arrays(
                pa.array(rows.astype(np.float32).ravel()), rows.shape[1]
            )
        folder = f"{self.root}/date={now:%Y-%m-%d}"
        name = f"{now:%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
        try:
            if self.is_local:  # a reader never sees half a file: write aside, then rename
                self.filesystem.create_dir(folder, recursive=True)
                pq.write_table(pa.table(columns), f"{folder}/.{name}", filesystem=self.filesystem)
                self.filesystem.move(f"{folder}/.{name}", f"{folder}/{name}")
            else:  # an S3 object appears whole when its upload completes; no folder objects
                pq.write_table(pa.table(columns), f"{folder}/{name}", filesystem=self.filesystem)
        except (OSError, pa.ArrowException) as exc:
            log(
                f"error: could not record {len(answers)} answers in {self.root} ({exc}); check "
                f"${RECORDS_ENV} and that the store is writable"
            )
            return None
        return f"{folder}/{name}"

    @property
    def is_local(self) -> bool:
        from pyarrow import fs

        return isinstance(self.filesystem, fs.LocalFileSystem)


def store(root: str | None = None) -> tuple[Any, str] | None:
    """(filesystem, root path) of the record store $MNIST_RECORDS names; None when it is off."""
    from pyarrow import fs

    root = root if root is not None else os.environ.get(RECORDS_ENV) or DEFAULT_ROOT
    if root.strip().lower() == OFF:
        return None
    if root.startswith("s3://"):
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"endpoint_override": endpoint} if endpoint else {}
        try:
            return fs.S3FileSystem(**options), root.removeprefix("s3://").rstrip("/")
        except (OSError, ValueError) as exc:
            raise PipelineError(f"${RECORDS_ENV}={root} is not a usable S3 store ({exc})") from None
    return fs.LocalFileSystem(), os.path.abspath(root)


def recorder(model: str, source: str) -> Recorder | None:
    """The Recorder of this process's settings, or None when recording is off."""
    found = store()
    if found is None:
        return None
    filesystem, root = found
    return Recorder(filesystem, root, model, source, os.environ.get(PIXELS_ENV) == "1")


def read_window(days: float | None, last: int | None, now: datetime | None = None) -> Any:
    """The records of the last `days` days, or the last `last` records (both: the last `last`
    of those days), oldest first, as a pandas DataFrame; empty when there are none. A file that
    is not a readable record file stops the read with its path (it is left in place)."""
    import pandas as pd
    import pyarrow.parquet as pq
    from pyarrow import ArrowException, fs

    found = store()
    if found is None:
        raise PipelineError(
            f"${RECORDS_ENV} is {OFF!r}, so there are no records to monitor; point it at the "
            "store the service writes to"
        )
    filesystem, root = found
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(days=days) if days is not None else None
    try:
        folders = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except (OSError, ArrowException) as exc:
        raise PipelineError(
            f"cannot list the record store {root} ({exc}); check ${RECORDS_ENV}"
        ) from None
    days_kept = sorted(
        info.path
        for info in folders
        if info.type == fs.FileType.Directory
        and info.base_name.startswith("date=")
        and (since is None or info.base_name.removeprefix("date=") >= f"{since:%Y-%m-%d}")
    )
    tables = []
    for folder in reversed(days_kept):  # newest day first: --last stops early
        files = filesystem.get_file_info(fs.FileSelector(folder))
        paths = sorted(
            info.path
            for info in files
            if info.base_name.endswith(".parquet") and not info.base_name.startswith(".")
        )
        for path in paths:
            try:
                table = pq.read_table(path, filesystem=filesystem).to_pandas()
            except (OSError, ArrowException) as exc:
                raise PipelineError(
                    f"{path} is not a readable record file ({exc}); move it out of {root} "
                    "(nothing else is changed) and run monitor again"
                ) from None
            missing = {"time", "model", "digit", "probability", "ood", "features"} - set(table)
            if missing:
                raise PipelineError(
                    f"{path} lacks the columns {sorted(missing)}, so it is not a record file; "
                    f"move it out of {root} and run monitor again"
                )
            tables.append(table)
        if last is not None and sum(map(len, tables)) >= last:
            break
    if not tables:
        return pd.DataFrame(columns=["time", "model", "digit", "probability", "ood", "features"])
    window = pd.concat(tables, ignore_index=True).sort_values("time", kind="stable")
    if since is not None:
        window = window[window["time"] >= since]
    if last is not None:
        window = window.tail(last)
    return window.reset_index(drop=True)
