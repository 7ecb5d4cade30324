"""Do members that differ in more than their seed make a better committee? Validation only.

The rule was committed with this script, before any of its numbers were seen:
- two members join the five seed-only members of `make committee` (seeds 1-5, the best recipe,
  150 epochs), each trained 150 epochs with the committee's params except for DIVERSE's changes:
  seed 6 has two hidden layers of 2048 and 1024 units instead of three of 1024; seed 7 sees affine
  distortions only (no elastic distortion; rotation +-15 degrees, scale +-15%, 3-pixel shift);
- compared, by mean softmax on the 6,000 validation images: the committee of the five seed-only
  members, against every committee of five made of both new members and three seed-only ones
  (10 committees);
- diversity is adopted only if those 10 committees make on average at least MIN_GAIN fewer
  errors than the seed-only committee (3 of 6,000 = 0.05 points); the test images load with the
  dataset but are never scored here.

It also records each member's errors, the mean errors of every pair with one new member against
every seed-only pair, and the committee of all seven, none of which decides.

In a repository where `make committee` has run (params.yaml holds its params):
    python studies/committee_diversity_search.py train 6      # then 7; resumes from last.pt
    python studies/committee_diversity_search.py score results/committee-diversity-search.json
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from pipeline import artifacts
from pipeline.config import Params, load_params, parse_params
from pipeline.data.loading import load_dataset
from pipeline.learner.model import load_checkpoint, model_from_checkpoint, one_thread
from pipeline.paths import RAW_DIR, VALID_INDEX_FILE, member_layout
from pipeline.stages import train

MIN_GAIN = 3
SEED_ONLY = [1, 2, 3, 4, 5]
DIVERSE: dict[int, dict[str, dict[str, Any]]] = {
    6: {"model": {"hidden": [2048, 1024]}},
    7: {"augment": {"elastic_alpha": 0.0, "rotation_deg": 15.0, "scale": 0.15, "crop_padding": 3}},
}


def member_params(committee: Params, seed: int) -> Params:
    """The committee's params with DIVERSE[seed]'s changes, validated like params.yaml."""
    raw = committee.model_dump(by_alias=True)  # `validate`, the key params.yaml uses
    for section, changes in DIVERSE[seed].items():
        raw[section] |= changes
    return parse_params(raw)


def committee_errors(
    softmax: dict[int, torch.Tensor], seeds: tuple[int, ...], labels: torch.Tensor
) -> int:
    """Validation errors of the mean softmax of these members."""
    votes = torch.stack([softmax[s] for s in seeds]).mean(0)
    return int((votes.argmax(1) != labels).sum())


def compare(softmax: dict[int, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """The rule's comparison and the informative extras, from each member's validation softmax."""
    new = tuple(DIVERSE)
    seed_only = committee_errors(softmax, tuple(SEED_ONLY), labels)
    mixed = {
        "+".join(map(str, chosen + new)): committee_errors(softmax, chosen + new, labels)
        for chosen in itertools.combinations(SEED_ONLY, len(SEED_ONLY) - len(new))
    }
    mixed_mean = mean(mixed.values())
    return {
        "member_errors": {s: committee_errors(softmax, (s,), labels) for s in softmax},
        "seed_only_committee_errors": seed_only,
        "mixed_committee_errors": mixed,
        "mixed_mean_errors": mixed_mean,
        "pair_mean_errors": {
            "seed_only": mean(
                committee_errors(softmax, pair, labels)
                for pair in itertools.combinations(SEED_ONLY, 2)
            ),
            **{
                f"with_{s}": mean(committee_errors(softmax, (s, o), labels) for o in SEED_ONLY)
                for s in new
            },
        },
        "all_seven_errors": committee_errors(softmax, tuple(softmax), labels),
        "rule": f"adopt if the mixed committees average >= {MIN_GAIN} fewer errors than seed-only",
        "adopted": seed_only - mixed_mean >= MIN_GAIN,
    }


@torch.no_grad()
def score(out: Path) -> None:
    data = load_dataset(RAW_DIR, load_params().data.image_size)
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, len(data.train_labels)))
    pixels = data.train_images[valid_idx].float().div(255)
    softmax = {
        seed: torch.softmax(
            model_from_checkpoint(load_checkpoint(member_layout(seed).model))(pixels), 1
        )
        for seed in SEED_ONLY + list(DIVERSE)
    }
    result = {
        "split": "valid",
        "images": len(valid_idx),
        "diverse_members": DIVERSE,
        **compare(softmax, data.train_labels[valid_idx]),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train.main(member_params(load_params(), int(sys.argv[2])), member=int(sys.argv[2]))
    else:
        with one_thread():
            score(Path(sys.argv[2]))
