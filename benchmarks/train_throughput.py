"""Training throughput: the reference notebook's loop against pipeline.learner.trainer, in one
process.

The reference loop is torchvision MNIST with RandomRotation(5, fill=(0,)), RandomCrop(28,
padding=2), ToTensor and Normalize, a shuffling DataLoader at batch 64, and the same MLP and
Adam. Ours is Trainer.train_epoch on the same images with the default params. Both run the same
number of batches with the same torch thread count, alternating `--repeats` times so that load
from other processes hits both alike; the best time of each counts.

    python benchmarks/train_throughput.py --batches 300 --repeats 3

Needs data/raw (dvc repro download). Prints and writes JSON with seed_images_per_s,
ours_images_per_s and speedup_vs_seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.config import parse_params
from pipeline.data.datasets import FILES
from pipeline.data.loading import load_dataset
from pipeline.learner.augment import Augmentation
from pipeline.learner.model import MLP, Architecture
from pipeline.learner.trainer import Split, Trainer
from pipeline.paths import RAW_DIR


def torchvision_root(raw_dir: Path, root: Path) -> Path:
    """torchvision's MNIST layout from our verified files; it finds them and skips the download."""
    target = root / "MNIST" / "raw"
    target.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(raw_dir / name, target / name)
    return root


def seed_loop(
    root: Path, batches: int, mean: float, std: float, seed: int
) -> tuple[float, dict[str, float]]:
    """The reference notebook's epoch, cut after `batches` batches: seconds, and where they went
    (data: the DataLoader's PIL transforms and collation; forward_backward; optimizer: zero_grad
    and step; other: the rest of the loop)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.RandomRotation(5, fill=(0,)),
            transforms.RandomCrop(28, padding=2),
            transforms.ToTensor(),
            transforms.Normalize((mean,), (std,)),
        ]
    )
    train_set = datasets.MNIST(str(root), train=True, download=True, transform=transform)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    torch.manual_seed(seed)
    model = MLP(Architecture(28, (250, 100)), 0.0, 1.0)  # Normalize already did mean/std
    optimizer = torch.optim.Adam(model.parameters())
    criterion = nn.CrossEntropyLoss()
    model.train()
    phases = dict.fromkeys(("data_augmentation", "forward_backward", "optimizer"), 0.0)
    clock = time.perf_counter
    started = clock()
    batches_left = iter(loader)
    for _ in range(batches):
        t0 = clock()
        batch = next(batches_left, None)
        t1 = clock()
        if batch is None:
            break
        images, labels = batch
        loss = criterion(model(images.view(images.shape[0], -1)), labels)
        loss.backward()
        t2 = clock()
        optimizer.step()
        optimizer.zero_grad()
        t3 = clock()
        phases["data_augmentation"] += t1 - t0
        phases["forward_backward"] += t2 - t1
        phases["optimizer"] += t3 - t2
    total = clock() - started
    return total, {**phases, "other": total - sum(phases.values()), "total": total}


def our_loop(data: Split, mean: float, std: float, seed: int) -> float:
    params = parse_params({"train": {"seed": seed}})
    torch.manual_seed(seed)
    model = MLP(Architecture.from_params(params), mean, std)
    steps = -(-len(data.labels) // params.train.batch_size)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps)
    started = time.perf_counter()
    trainer.train_epoch(data, 1)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw", type=Path, default=RAW_DIR, help="folder with the four IDX .gz files"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=938,
        help="batches of 64 per measurement (938 = 60,000 images)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating measurements of each loop"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/benchmarks/train_throughput.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.raw, 28)
    pixels = dataset.train_images.double() / 255
    mean, std = pixels.mean().item(), pixels.std(correction=0).item()
    images = min(args.batches * 64, len(dataset.train_labels))
    ours_data = Split(dataset.train_images[:images], dataset.train_labels[:images])

    seed_s, ours_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(args.raw, Path(tmp))
        for repeat in range(args.repeats):
            seed_s.append(seed_loop(root, args.batches, mean, std, repeat)[0])
            ours_s.append(our_loop(ours_data, mean, std, repeat))
            print(
                f"repeat {repeat + 1}: reference {seed_s[-1]:.2f} s, ours {ours_s[-1]:.2f} s",
                file=sys.stderr,
            )

    result = {
        "images": images,
        "batch_size": 64,
        "threads": args.threads,
        "repeats": args.repeats,
        "seed_seconds": seed_s,
        "ours_seconds": ours_s,
        "seed_images_per_s": images / min(seed_s),
        "ours_images_per_s": images / min(ours_s),
        "speedup_vs_seed": min(seed_s) / min(ours_s),
        "speedup_per_repeat": [s / o for s, o in zip(seed_s, ours_s, strict=True)],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
