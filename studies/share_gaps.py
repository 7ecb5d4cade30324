"""How far an unstratified split's class shares stray from the training set's, over many seeds.

The source of the numbers behind validate.class_share_tolerance's default (params.yaml):

    python studies/share_gaps.py                # data/raw/ from `dvc repro download`
    python studies/share_gaps.py --seeds 3000 --fraction 0.1

A gap is the largest |share of class c in a split - share of c in the training set| over classes
and both splits, for the split the `split` stage draws with that seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.config import SplitParams
from pipeline.data.datasets import TRAIN_LABELS
from pipeline.data.idx import read_idx
from pipeline.paths import RAW_DIR
from pipeline.stages.split import split_indices


def largest_gap(labels: np.ndarray, fraction: float, seed: int) -> float:
    full = np.bincount(labels, minlength=labels.max() + 1) / len(labels)
    gaps = [
        np.bincount(labels[index], minlength=len(full)) / len(index) - full
        for index in split_indices(
            labels, SplitParams(valid_fraction=fraction, seed=seed, stratify=False)
        )
    ]
    return float(np.abs(gaps).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--labels", type=Path, default=RAW_DIR / TRAIN_LABELS, help="training labels IDX file"
    )
    parser.add_argument("--seeds", type=int, default=3000, help="seeds 0 .. N-1 (default 3000)")
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="split.valid_fraction (default 0.1)"
    )
    parser.add_argument(
        "--seed", type=int, default=12345, help="one more seed to report alone (default 12345)"
    )
    args = parser.parse_args(argv)
    labels = read_idx(args.labels)
    gaps = np.array([largest_gap(labels, args.fraction, seed) for seed in range(args.seeds)])
    one = largest_gap(labels, args.fraction, args.seed)
    print(
        f"seeds 0-{args.seeds - 1}: gap > 0.01 for {(gaps > 0.01).mean():.1%}, "
        f"> 0.02 for {(gaps > 0.02).mean():.1%}; largest {gaps.max():.4f}; "
        f"seed {args.seed}: {one:.4f}"
    )


if __name__ == "__main__":
    main()
