"""Labelled batches: new labelled images that make a new dataset version (docs/data.md).

`python -m pipeline labelled add [FOLDER]` takes each batch subfolder of the inbox (FOLDER, else
$MNIST_LABELLED) that the manifest data/labelled.json does not hold yet, checks it, copies its two
IDX files into data/labelled/<batch>/ and records it in the manifest. It is an operations
command, not a DVC stage: the manifest is git's, the files DVC's (data/labelled.dvc), and the
stages that read the batches (split, validate, train, report, the committee) depend on the
manifest, whose MD5s pin the files' bytes: each read checks them.

The batches are appended to the training split only, after the official training images (their
indices start at the official count), so validation, test and the statistics stay the official
ones. No batch, or no manifest, is today's official dataset, byte for byte.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from pipeline.data.datasets import CLASSES, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.data.idx import parse_idx
from pipeline.errors import PipelineError
from pipeline.paths import LABELLED_DIR, LABELLED_MANIFEST

INBOX_ENV = "MNIST_LABELLED"
# Exit codes of `labelled add`, so a scheduled job can branch: retrain only on a new version.
ADDED, NOTHING_NEW, FAILED = 0, 3, 1
IMAGE_SHAPE = (28, 28)  # every dataset of pipeline/data/datasets.py is 28x28
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a batch name is a folder name on every OS
# The two files of a batch: the canonical training names, gzipped or not (pipeline/data/idx.py reads
# both).
ROLES = {"images": TRAIN_IMAGES, "labels": TRAIN_LABELS}
READD = "run `dvc pull data/labelled` (or add the batch again: python -m pipeline labelled add)"


@dataclass(frozen=True)
class Batch:
    """One manifest entry: what identifies the batch's files and what it adds."""

    name: str
    images: str  # file name in data/labelled/<name>/
    images_md5: str
    labels: str
    labels_md5: str
    count: int
    per_class: dict[str, int]
    added: str  # UTC ISO 8601


# ---- the manifest ----------------------------------------------------------------------------


def read_manifest(path: Path = LABELLED_MANIFEST) -> list[Batch]:
    """The batches of the current dataset version; none when the file is absent or empty (the
    official dataset only)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PipelineError(
            f"{path}: cannot read ({exc.strerror}); check its permissions"
        ) from None
    if not text.strip():
        return []
    fix = f"restore it from git (git checkout -- {path})"
    try:
        entries = json.loads(text).get("batches", [])
        batches = [Batch(**entry) for entry in entries]
    except (ValueError, TypeError, AttributeError) as exc:
        raise PipelineError(f"{path} is not a labelled-batch manifest ({exc}); {fix}") from None
    names = [batch.name for batch in batches]
    if len(set(names)) != len(names):
        raise PipelineError(f"{path} names a batch twice; {fix}")
    return batches


def write_manifest(batches: list[Batch], path: Path = LABELLED_MANIFEST) -> None:
    atomic.write_json(path, {"batches": [asdict(batch) for batch in batches]})


def version(batches: list[Batch]) -> dict[str, Any]:
    """The dataset version as validate reports it: how many batches and images, and which."""
    return {
        "labelled_batches": len(batches),
        "labelled_images": sum(batch.count for batch in batches),
        "batches": [
            {
                "name": b.name,
                "images_md5": b.images_md5,
                "labels_md5": b.labels_md5,
                "count": b.count,
            }
            for b in batches
        ],
    }


def md5s(batches: list[Batch]) -> dict[str, str]:
    """`labelled/<batch>/<file>` -> md5, for the run's dataset.md5.* tags beside the raw files'."""
    return {
        f"labelled/{b.name}/{file}": md5
        for b in batches
        for file, md5 in ((b.images, b.images_md5), (b.labels, b.labels_md5))
    }


# ---- reading the batches in the stages --------------------------------------------------------


def _read_checked(path: Path, md5: str, batch: str, manifest: Path) -> bytes:
    """The file's bytes, refused unless they are the ones the manifest recorded."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(
            f"{path}: cannot read ({exc.strerror}), but {manifest} lists batch {batch!r}; {READD}"
        ) from None
    found = hashlib.md5(data).hexdigest()
    if found != md5:
        raise PipelineError(
            f"{path}: md5 {found} differs from {md5} that {manifest} records for batch "
            f"{batch!r}; {READD}"
        )
    return data


def load(
    manifest: Path = LABELLED_MANIFEST, root: Path = LABELLED_DIR, images: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """Every batch's (images uint8 [L, 28, 28], labels uint8 [L]) in manifest order, each file
    checked against its MD5; None without batches. `images=False` reads only the labels (split),
    giving an empty image array."""
    batches = read_manifest(manifest)
    if not batches:
        return None
    pixels, labels = [], []
    for batch in batches:
        folder = root / batch.name
        label_bytes = _read_checked(folder / batch.labels, batch.labels_md5, batch.name, manifest)
        labels.append(parse_idx(label_bytes, str(folder / batch.labels)))
        if images:
            image_bytes = _read_checked(
                folder / batch.images, batch.images_md5, batch.name, manifest
            )
            pixels.append(parse_idx(image_bytes, str(folder / batch.images)))
    image_array = np.concatenate(pixels) if images else np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8)
    return image_array, np.concatenate(labels)


def append(
    train: tuple[np.ndarray, np.ndarray], extra: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The official training arrays with the batches after them: their indices start at the
    official count, so the split of the official images stays as it was."""
    if extra is None:
        return train
    return np.concatenate([train[0], extra[0]]), np.concatenate([train[1], extra[1]])


# ---- `labelled add` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A checked inbox batch: its files, their bytes and md5s, and its counts."""

    name: str
    files: dict[str, Path]  # role -> path in the inbox
    data: dict[str, bytes]
    md5: dict[str, str]
    count: int
    per_class: dict[str, int]


def _find(folder: Path, role: str) -> Path:
    """The batch's file of that role: the canonical name, gzipped or not, never both."""
    gz = folder / ROLES[role]
    plain = folder / ROLES[role].removesuffix(".gz")
    present = [path for path in (gz, plain) if path.is_file()]
    if len(present) == 2:
        raise PipelineError(
            f"{folder}: holds both {gz.name} and {plain.name}; keep one of them and run labelled "
            "add again"
        )
    if not present:
        raise PipelineError(
            f"{gz}: missing (a batch holds {ROLES['images']} and {ROLES['labels']}, gzipped or "
            "not); put both files in the batch folder and run labelled add again"
        )
    return present[0]


def check_batch(folder: Path) -> Candidate:
    """Read and check one inbox batch; any defect raises one PipelineError naming the file, the
    cause and the fix."""
    fix = "fix or re-export the batch, then run labelled add again"
    if not NAME.match(folder.name):
        raise PipelineError(
            f"{folder}: a batch name uses only letters, digits, '.', '_' and '-' and starts with a "
            "letter or digit; rename the folder and run labelled add again"
        )
    files = {role: _find(folder, role) for role in ROLES}
    data, arrays = {}, {}
    for role, path in files.items():
        try:
            data[role] = path.read_bytes()
        except OSError as exc:
            raise PipelineError(f"{path}: cannot read ({exc.strerror}); {fix}") from None
        try:
            arrays[role] = parse_idx(data[role], str(path))
        except PipelineError as exc:
            raise PipelineError(f"{exc}; {fix}") from None
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise PipelineError(
            f"{files['images']}: expected uint8 images [N, 28, 28], got {images.dtype} "
            f"{list(images.shape)}; {fix}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise PipelineError(
            f"{files['labels']}: expected uint8 labels [N], got {labels.dtype} "
            f"{list(labels.shape)}; {fix}"
        )
    if len(images) != len(labels):
        raise PipelineError(
            f"{files['images']} has {len(images)} images but {files['labels'].name} has "
            f"{len(labels)} labels; {fix}"
        )
    if len(labels) == 0:
        raise PipelineError(f"{files['images']}: holds no images; {fix}")
    bad = np.flatnonzero(labels > max(CLASSES))
    if len(bad):
        raise PipelineError(
            f"{files['labels']}: label {int(labels[bad[0]])} at index {int(bad[0])} is not a "
            f"class id {min(CLASSES)}-{max(CLASSES)} ({len(bad)} such labels); {fix}"
        )
    counts = np.bincount(labels, minlength=len(CLASSES))
    return Candidate(
        name=folder.name,
        files=files,
        data=data,
        md5={role: hashlib.md5(content).hexdigest() for role, content in data.items()},
        count=len(labels),
        per_class={str(c): int(counts[c]) for c in CLASSES},
    )


def _batch_folders(inbox: Path) -> Iterator[Path]:
    """The inbox's batch subfolders, by name; hidden ones (a copy in progress) are left alone."""
    if not inbox.is_dir():
        what = "is a file, not a folder" if inbox.exists() else "does not exist"
        raise PipelineError(
            f"{inbox}: the labelled inbox {what}; give the folder that holds one subfolder per "
            f"batch (python -m pipeline labelled add FOLDER, or set {INBOX_ENV})"
        )
    loose = [
        name
        for role in ROLES
        for name in (ROLES[role], ROLES[role].removesuffix(".gz"))
        if (inbox / name).is_file()
    ]
    if loose:
        raise PipelineError(
            f"{inbox / loose[0]}: batch files lie in the inbox itself; move them into a subfolder "
            "named after the batch (e.g. 2024-06-01) and run labelled add again"
        )
    yield from sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith("."))


def plan(inbox: Path, batches: list[Batch]) -> tuple[list[Candidate], list[str]]:
    """The batches to add and one line per batch skipped; raises before anything is written when
    any batch is bad or clashes with the manifest."""
    known = {batch.name: batch for batch in batches}
    by_md5 = {(batch.images_md5, batch.labels_md5): batch.name for batch in batches}
    new: list[Candidate] = []
    skipped: list[str] = []
    for folder in _batch_folders(inbox):
        candidate = check_batch(folder)
        key = (candidate.md5["images"], candidate.md5["labels"])
        entry = known.get(candidate.name)
        if entry is not None and (entry.images_md5, entry.labels_md5) != key:
            raise PipelineError(
                f"{folder}: batch {candidate.name!r} is already in {LABELLED_MANIFEST} with other "
                "files (a batch is never changed, so that every dataset version can be rebuilt); "
                "give the new files a new batch name and run labelled add again"
            )
        if key in by_md5:
            skipped.append(f"skipped {candidate.name}: already added as batch {by_md5[key]!r}")
            continue
        by_md5[key] = candidate.name
        new.append(candidate)
    return new, skipped


def store(candidate: Candidate, root: Path) -> Batch:
    """Copy the batch's files into root/<name>/, each written aside and renamed (atomic.py): a
    killed run leaves whole files or none, and the manifest, written last, never names a missing
    one."""
    for role, path in candidate.files.items():
        atomic.write_bytes(root / candidate.name / path.name, candidate.data[role])
    return Batch(
        name=candidate.name,
        images=candidate.files["images"].name,
        images_md5=candidate.md5["images"],
        labels=candidate.files["labels"].name,
        labels_md5=candidate.md5["labels"],
        count=candidate.count,
        per_class=candidate.per_class,
        added=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def add(
    inbox: Path | None = None, manifest: Path = LABELLED_MANIFEST, root: Path = LABELLED_DIR
) -> int:
    """Add the inbox's new batches; ADDED (0) when one was, NOTHING_NEW (3) when none. Bad input
    raises PipelineError with nothing written."""
    if inbox is None:
        if not os.environ.get(INBOX_ENV):
            raise PipelineError(
                f"no labelled inbox: give it (python -m pipeline labelled add FOLDER) or set "
                f"{INBOX_ENV} to the folder that holds one subfolder per batch"
            )
        inbox = Path(os.environ[INBOX_ENV])
    batches = read_manifest(manifest)
    new, skipped = plan(inbox, batches)
    for line in skipped:
        print(line)
    if not new:
        print(f"labelled: nothing new in {inbox}; {_summary(batches)}")
        return NOTHING_NEW
    added = [store(candidate, root) for candidate in new]
    write_manifest(batches + added, manifest)
    for batch in added:
        shares = " ".join(f"{c}:{n}" for c, n in batch.per_class.items())
        print(f"added {batch.name}: {batch.count:,} images ({shares})")
    print(f"labelled: {_summary(batches + added)}; next: dvc add {root} and commit {manifest}")
    return ADDED


def _summary(batches: list[Batch]) -> str:
    total = sum(batch.count for batch in batches)
    return f"dataset version: {len(batches)} labelled batch(es), {total:,} labelled images"
