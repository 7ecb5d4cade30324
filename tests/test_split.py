"""Stage `split`: deterministic, seed-driven, optionally stratified, byte-identical output."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from pipeline import paths
from pipeline.config import SplitParams, parse_params
from pipeline.data import fetch
from pipeline.data.idx import encode_idx
from pipeline.errors import PipelineError
from pipeline.stages import split
from tests.helpers import load_script, write_dataset

share_gaps = load_script("share_gaps")


def mnist_like_labels(n: int = 60000, seed: int = 0) -> np.ndarray:
    """Imbalanced like MNIST's (about 9%-11% per class), shuffled."""
    shares = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]) / 60000
    labels = np.repeat(np.arange(10), np.round(shares * n).astype(int))[:n]
    return np.random.default_rng(seed).permutation(labels).astype(np.uint8)


def shares(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10) / len(labels)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_is_a_sorted_disjoint_cover_of_the_training_set(stratify):
    labels = mnist_like_labels()
    train, valid = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12345, stratify=stratify)
    )
    assert (len(train), len(valid)) == (54000, 6000)
    assert train.dtype == valid.dtype == np.int64
    assert (np.diff(train) > 0).all() and (np.diff(valid) > 0).all()
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(60000))


@pytest.mark.parametrize("stratify", [False, True])
def test_same_seed_same_split_other_seed_other_split(stratify):
    labels = mnist_like_labels()
    first = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12345, stratify=stratify)
    )
    again = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12345, stratify=stratify)
    )
    other = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12346, stratify=stratify)
    )
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_split_ignores_and_keeps_numpy_global_state():
    labels = mnist_like_labels(1000)
    np.random.seed(1)
    first = split.split_indices(labels, SplitParams(valid_fraction=0.1, seed=7, stratify=False))
    after = np.random.random()
    np.random.seed(2)
    second = split.split_indices(labels, SplitParams(valid_fraction=0.1, seed=7, stratify=False))
    np.random.seed(1)
    assert np.array_equal(first[1], second[1])
    assert np.random.random() == after  # the split drew nothing from the global generator


def test_stratify_keeps_every_class_share_within_a_tenth_of_a_point():
    labels = mnist_like_labels()
    full = shares(labels)
    train, valid = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12345, stratify=True)
    )
    assert np.abs(shares(labels[valid]) - full).max() < 0.001
    assert np.abs(shares(labels[train]) - full).max() < 0.001
    plain_train, plain_valid = split.split_indices(
        labels, SplitParams(valid_fraction=0.1, seed=12345, stratify=False)
    )
    assert np.abs(shares(labels[plain_valid]) - full).max() > 0.001  # what stratifying buys


@pytest.mark.parametrize("n", [200, 600, 60000])
def test_stratified_shares_stray_by_less_than_one_over_the_split_size(n):
    """The bound docs/data.md gives: under 1,000 images a split may stray beyond 0.1 points."""
    labels = mnist_like_labels(n)
    train, valid = split.split_indices(labels, SplitParams(seed=1, stratify=True))
    for index in (train, valid):
        assert np.abs(shares(labels[index]) - shares(labels)).max() < 1 / len(index)
    if len(valid) < 1000:
        assert np.abs(shares(labels[valid]) - shares(labels)).max() > 0.001


def test_share_gaps_script_measures_the_split_the_stage_draws(tmp_path, capsys):
    """studies/share_gaps.py is where validate.class_share_tolerance's figures come from
    (params.yaml); a change to split_indices must not leave it broken unnoticed."""
    labels = mnist_like_labels(n=600)
    train, valid = split.split_indices(labels, SplitParams(valid_fraction=0.1, seed=3))
    stage_gap = max(np.abs(shares(labels[i]) - shares(labels)).max() for i in (train, valid))
    assert share_gaps.largest_gap(labels, 0.1, seed=3) == pytest.approx(stage_gap)
    (tmp_path / "labels.gz").write_bytes(encode_idx(labels))
    share_gaps.main(["--labels", str(tmp_path / "labels.gz"), "--seeds", "3"])
    assert re.fullmatch(
        r"seeds 0-2: gap > 0.01 for \d+\.\d%, > 0.02 for \d+\.\d%; largest 0\.\d{4}; "
        r"seed 12345: 0\.\d{4}\n",
        capsys.readouterr().out,
    )


def test_stratify_with_uneven_quotas_still_gives_exact_sizes():
    labels = np.array(
        [0] * 7 + [1] * 5 + [2] * 3 + [3] * 1, dtype=np.uint8
    )  # 16 images, 5 to valid
    train, valid = split.split_indices(
        labels, SplitParams(valid_fraction=0.3, seed=0, stratify=True)
    )
    assert (len(train), len(valid)) == (11, 5)
    assert sorted(np.bincount(labels[valid], minlength=4).tolist()) == [0, 1, 2, 2]


@pytest.mark.parametrize("fraction", [0.001, 0.999])
def test_fraction_that_empties_a_split_is_rejected(fraction):
    with pytest.raises(PipelineError, match=r"split.valid_fraction .* leaves"):
        split.split_indices(np.zeros(100, dtype=np.uint8), SplitParams(valid_fraction=fraction))


def test_valid_count_matches_the_documented_formula():
    assert SplitParams(valid_fraction=0.1).valid_count(60000) == 6000
    assert SplitParams(valid_fraction=0.1).valid_count(600) == 60
    assert (
        SplitParams(valid_fraction=0.25).valid_count(10) == 2
    )  # round half to even, as validate expects


def run_stage(workdir, mirror, **split_params):
    fetch.download(
        parse_params({"data": {"name": "custom"}}), paths.RAW_DIR, {"MNIST_MIRROR": str(mirror)}
    )
    split.main(parse_params({"split": split_params}))
    return {
        p.name: p.read_bytes()
        for p in (paths.TRAIN_INDEX_FILE, paths.VALID_INDEX_FILE, paths.SPLIT_SUMMARY_FILE)
    }


def test_stage_output_is_byte_identical_for_the_same_params(
    workdir, synthetic_mirror, tmp_path, monkeypatch
):
    first = run_stage(workdir, synthetic_mirror, seed=5)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert run_stage(other, synthetic_mirror, seed=5) == first
    assert run_stage(other, synthetic_mirror, seed=6)["valid.npy"] != first["valid.npy"]


def test_stage_pins_the_generator_stream(workdir, tmp_path):
    """Same params give the same bytes on any machine: a change in numpy's stream shows here."""
    mirror = write_dataset(tmp_path / "labels", n_train=10, n_test=10)
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(
        encode_idx((np.arange(60000) % 10).astype(np.uint8))
    )
    fetch.download(
        parse_params({"data": {"name": "custom"}}), paths.RAW_DIR, {"MNIST_MIRROR": str(mirror)}
    )
    split.main(parse_params({}))
    valid = np.load(paths.VALID_INDEX_FILE)
    assert valid[:5].tolist() == PINNED_FIRST_VALID
    assert hashlib.sha256(paths.VALID_INDEX_FILE.read_bytes()).hexdigest() == PINNED_VALID_SHA256


# Without stratify only the image count matters, so these are also real MNIST's
# data/split/valid.npy.
PINNED_FIRST_VALID = [9, 60, 62, 63, 72]
PINNED_VALID_SHA256 = "e737bd5f8a7f04d663a0e177f0cf8377e86e4df630d29e79d07d382bbb4a2d35"


def test_stage_writes_summary_with_counts_per_split_and_class(workdir, synthetic_mirror):
    run_stage(workdir, synthetic_mirror, stratify=True, valid_fraction=0.2, seed=3)
    summary = json.loads(paths.SPLIT_SUMMARY_FILE.read_text())
    train, valid = np.load(paths.TRAIN_INDEX_FILE), np.load(paths.VALID_INDEX_FILE)
    assert (
        summary["counts"]
        == {"train": 480, "valid": 120}
        == {"train": len(train), "valid": len(valid)}
    )
    assert (summary["valid_fraction"], summary["seed"], summary["stratify"]) == (0.2, 3, True)
    assert summary["per_class"]["valid"] == {
        str(k): 12 for k in range(10)
    }  # 60 per class, stratified
    assert summary["per_class"]["train"] == {str(k): 48 for k in range(10)}
