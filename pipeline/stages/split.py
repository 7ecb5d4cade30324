"""Stage `split`: a deterministic train/valid split of the official training set.

Labelled batches (pipeline/data/labelled.py) join the train split only, after the official images:
the validation images stay the same official ones for every dataset version. Only the labels are
read. The draw uses its own np.random.Generator seeded by split.seed, never numpy's global state, so
the same params give byte-identical index files on any machine.
"""

from __future__ import annotations

import numpy as np

from pipeline import artifacts
from pipeline.config import Params, SplitParams
from pipeline.data import labelled
from pipeline.data.datasets import TRAIN_LABELS
from pipeline.data.idx import read_idx
from pipeline.errors import PipelineError
from pipeline.paths import RAW_DIR, TRAIN_INDEX_FILE, VALID_INDEX_FILE
from pipeline.progress import log


def _stratified_valid(labels: np.ndarray, n_valid: int, rng: np.random.Generator) -> np.ndarray:
    """Each class gives its share of n_valid, rounded by largest remainder so the total is exact.

    Every class's share then differs from the full set's by less than 1/n_valid in valid and
    1/n_train in train.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * n_valid / len(labels)
    quota = np.floor(exact).astype(np.int64)
    largest_remainder_first = np.lexsort((np.arange(len(classes)), quota - exact))
    quota[largest_remainder_first[: n_valid - int(quota.sum())]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(inverse == c))[: quota[c]] for c in range(len(classes))
    ]
    return np.concatenate(chosen)


def split_indices(labels: np.ndarray, cfg: SplitParams) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid): int64 indices into `labels`, each ascending, disjoint, covering all."""
    n = len(labels)
    n_valid = cfg.valid_count(n)
    if not 0 < n_valid < n:
        raise PipelineError(
            f"split.valid_fraction {cfg.valid_fraction} of {n} training images leaves {n_valid} "
            f"for validation and {n - n_valid} for training; choose a fraction that leaves both "
            "non-empty"
        )
    rng = np.random.default_rng(cfg.seed)
    valid = (
        _stratified_valid(labels, n_valid, rng) if cfg.stratify else rng.permutation(n)[:n_valid]
    )
    in_valid = np.zeros(n, dtype=bool)
    in_valid[valid] = True
    return np.flatnonzero(~in_valid).astype(np.int64), np.flatnonzero(in_valid).astype(np.int64)


def with_labelled(train: np.ndarray, official: int, labelled_count: int) -> np.ndarray:
    """The train indices followed by the labelled images', which come after the official ones."""
    return np.concatenate([train, np.arange(official, official + labelled_count, dtype=np.int64)])


def summary(labels: np.ndarray, train: np.ndarray, valid: np.ndarray, params: Params) -> dict:
    classes = np.unique(labels)

    def per_class(index: np.ndarray) -> dict[str, int]:
        counts = np.searchsorted(classes, labels[index])
        return {
            str(c): int(k)
            for c, k in zip(classes, np.bincount(counts, minlength=len(classes)), strict=True)
        }

    return {
        "valid_fraction": params.split.valid_fraction,
        "seed": params.split.seed,
        "stratify": params.split.stratify,
        "counts": {"train": len(train), "valid": len(valid)},
        "per_class": {"train": per_class(train), "valid": per_class(valid)},
    }


def main(params: Params) -> None:
    labels = read_idx(RAW_DIR / TRAIN_LABELS)
    if labels.ndim != 1:
        raise PipelineError(
            f"{RAW_DIR / TRAIN_LABELS}: expected a 1-D label array, got shape {labels.shape}"
        )
    cfg = params.split
    train, valid = split_indices(labels, cfg)
    extra = labelled.load(images=False)
    if extra is not None:
        train = with_labelled(train, len(labels), len(extra[1]))
        labels = np.concatenate([labels, extra[1]])
    artifacts.write_index(TRAIN_INDEX_FILE, train)
    artifacts.write_index(VALID_INDEX_FILE, valid)
    artifacts.write_split_summary(summary(labels, train, valid, params))
    added = 0 if extra is None else len(extra[1])
    log(
        f"split: {len(train):,} train ({added:,} of them labelled) / {len(valid):,} valid "
        f"(seed {cfg.seed}, stratify {str(cfg.stratify).lower()})"
    )
