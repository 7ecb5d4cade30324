"""Does averaging the committee over one-pixel shifts help? Measured on validation only.

The rule was committed with this script, before any of its numbers were seen:
- views compared: `none` (the image alone), `cross` (the image and its four one-pixel shifts: up,
  down, left, right; 5 views) and `square` (the image and its eight neighbours in a 3x3 pixel
  square; 9 views); zero fill, as the training crops shift with zero fill;
- each view goes through every member; the committee averages all member-view softmax outputs;
- a variant is adopted only if it makes at least MIN_GAIN fewer validation errors than `none`
  (3 of 6,000 = 0.05 points); of two that qualify, the one with fewer errors, on a tie the one
  with fewer views; the test images load with the dataset but are never scored here.

It also records, for the image alone, the mean validation errors of every committee of k of the
members (k = 1 .. all), which shows how much one more seed-only member is worth.

Run from a repository whose committee members are trained (make committee):
    python studies/committee_tta_search.py results/committee-tta-search.json
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import artifacts
from pipeline.config import load_params
from pipeline.data.loading import load_dataset
from pipeline.learner.model import MLP, load_checkpoint, model_from_checkpoint, one_thread
from pipeline.paths import RAW_DIR, VALID_INDEX_FILE, member_layout

MIN_GAIN = 3
VARIANTS = {
    "none": [(0, 0)],
    "cross": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    "square": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
}


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """uint8 images [N, S, S] moved dy rows down and dx columns right, zero fill."""
    size = images.shape[-1]
    padded = F.pad(images, (1, 1, 1, 1))
    return padded[:, 1 - dy : 1 - dy + size, 1 - dx : 1 - dx + size]


@torch.no_grad()
def member_softmax(models: list[MLP], images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """[members, N, 10] softmax outputs for one view of the images."""
    pixels = shifted(images, dy, dx).float().div(255)
    return torch.stack([torch.softmax(model(pixels), 1) for model in models])


def mean_errors_by_size(softmax: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """{k: mean errors over every committee of k members} for [members, N, 10] softmax outputs."""
    by_size = {}
    for k in range(1, len(softmax) + 1):
        errors = [
            int((softmax[list(chosen)].mean(0).argmax(1) != labels).sum())
            for chosen in itertools.combinations(range(len(softmax)), k)
        ]
        by_size[k] = sum(errors) / len(errors)
    return by_size


def main(out: Path) -> None:
    params = load_params()
    seeds = params.committee.seeds
    models = [model_from_checkpoint(load_checkpoint(member_layout(s).model)) for s in seeds]
    data = load_dataset(RAW_DIR, params.data.image_size)
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, len(data.train_labels)))
    images, labels = data.train_images[valid_idx], data.train_labels[valid_idx]
    views = {view: member_softmax(models, images, *view) for view in VARIANTS["square"]}
    errors = {}
    for name, shifts in VARIANTS.items():
        mean = torch.stack([views[view] for view in shifts]).mean((0, 1))
        errors[name] = int((mean.argmax(1) != labels).sum())
    member_errors = [int((p.argmax(1) != labels).sum()) for p in views[(0, 0)]]
    qualifying = [n for n in VARIANTS if n != "none" and errors["none"] - errors[n] >= MIN_GAIN]
    adopted = min(qualifying, key=lambda n: (errors[n], len(VARIANTS[n])), default="none")
    result = {
        "split": "valid",
        "images": len(labels),
        "seeds": seeds,
        "member_errors": member_errors,
        "mean_errors_by_committee_size": mean_errors_by_size(views[(0, 0)], labels),
        "committee_errors": errors,
        "committee_accuracy": {n: 1 - e / len(labels) for n, e in errors.items()},
        "rule": f"adopt a variant with >= {MIN_GAIN} fewer errors than none; fewest errors wins",
        "adopted": adopted,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with one_thread():
        main(Path(sys.argv[1]))
