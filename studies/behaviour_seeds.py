"""Measure across training seeds what the behaviour tier (tests/model/) and the promotion gate
check.

    python studies/behaviour_seeds.py --seeds 1-13,12345 [-S section.key=value ...] [--jobs N]

Each seed trains params.yaml's model (with the -S overrides, as `dvc exp run -S` takes them) the
way the train stage does, without MLflow, on data/raw and data/split from a finished `dvc repro`,
one process per seed with one thread each; then measures it with the pipeline's own functions.
Prints one JSON object per seed and, last, the min-max range of every number over the seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seed_list(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def measure(seed: int, overrides: list[str]) -> dict:
    """Train and measure one seed (runs inside the child process)."""
    import numpy as np
    import torch
    import yaml

    sys.path.insert(0, str(REPO))
    from pipeline.config import parse_params
    from pipeline.data.loading import load_dataset, resize
    from pipeline.learner.augment import Augmentation
    from pipeline.learner.losses import probabilities
    from pipeline.learner.model import MLP, Architecture, model_outputs
    from pipeline.learner.trainer import Split, Trainer
    from pipeline.quality.measures import (
        calibration_metrics,
        off_distribution_examples,
        perturbed_predictions,
        robustness_metrics,
    )
    from pipeline.serving import ood
    from pipeline.stages.stats import pixel_stats

    torch.set_num_threads(1)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in [*overrides, f"train.seed={seed}", "train.device=cpu"]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    params = parse_params(raw)
    size = params.data.image_size
    data = load_dataset(REPO / "data/raw", 28)
    train_idx = torch.from_numpy(np.load(REPO / "data/split/train.npy"))
    valid_idx = torch.from_numpy(np.load(REPO / "data/split/valid.npy"))
    stats = pixel_stats(resize(data.train_images, size))  # what the stats stage computes
    train = Split(resize(data.train_images[train_idx], size), data.train_labels[train_idx])
    valid = Split(resize(data.train_images[valid_idx], size), data.train_labels[valid_idx])
    torch.manual_seed(seed)
    model = MLP(Architecture.from_params(params), stats["mean"], stats["std"])
    trainer = Trainer(
        model,
        params.train,
        Augmentation.from_params(params),
        -(-len(train.labels) // params.train.batch_size),
    )
    best, started = None, time.perf_counter()
    for epoch in range(1, params.train.epochs + 1):  # keep the best valid loss, as train does
        result = trainer.run_epoch(train, valid, epoch)
        if best is None or result.valid_loss < best[0]:
            best = (result.valid_loss, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    model.eval()

    outputs = model_outputs(model, resize(data.test_images, size), 2000)
    labels, clean = data.test_labels, outputs.argmax(1)
    found = {
        "seed": seed,
        "train_seconds": time.perf_counter() - started,
        "test_accuracy": (clean == labels).double().mean().item(),
    }
    found.update(calibration_metrics(outputs, labels, params.train.loss))
    found.update(robustness_metrics(model, data.test_images, labels, 2000))
    perturbed = perturbed_predictions(model, data.test_images, 2000)
    found.update(
        {
            f"unchanged_{name}": (answers == clean).double().mean().item()
            for name, answers in perturbed.items()
            if name.startswith("shift_1px")
        }
    )
    reference = ood.fit_reference(data.train_images[train_idx], data.train_images[valid_idx])
    noise = torch.randint(
        0, 256, (1000, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    found["uniform_noise_flagged"] = float(np.mean([r.ood for r in ood.check(noise, reference)]))
    found["test_digits_flagged"] = float(
        np.mean([r.ood for r in ood.check(data.test_images, reference)])
    )
    names, pictures = off_distribution_examples()
    confidence = (
        probabilities(model_outputs(model, resize(pictures, size), 100), params.train.loss)
        .max(1)
        .values
    )
    found.update(
        {
            f"confidence_{name.replace(' ', '_')}": c
            for name, c in zip(names, confidence.tolist(), strict=True)
        }
    )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="1-5", help="e.g. 1-13,12345")
    parser.add_argument(
        "-S", dest="overrides", action="append", default=[], metavar="section.key=value"
    )
    parser.add_argument("--jobs", type=int, default=4, help="seeds trained at once")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.overrides)))
        return 0

    def run(seed: int) -> dict:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(seed),
            *(f"-S{o}" for o in args.overrides),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:  # the child's own error line, not CalledProcessError's
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SystemExit(f"error: seed {seed}: {last}")
        return json.loads(done.stdout.splitlines()[-1])

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, seed_list(args.seeds)))
    for row in rows:
        print(json.dumps(row))
    keys = [k for k in rows[0] if k != "seed"]
    print(
        json.dumps(
            {
                "seeds": [r["seed"] for r in rows],
                "overrides": args.overrides,
                "range": {k: [min(r[k] for r in rows), max(r[k] for r in rows)] for k in keys},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
