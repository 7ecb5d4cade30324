"""Stage `validate`: each planted defect fails its own great-expectations check, by name.

The clean case is a tiny synthetic dataset split with stratify, so that every check passes on it;
each test changes one thing and asserts exactly which expectations fail.
"""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import artifacts, paths
from pipeline.config import SplitParams, parse_params
from pipeline.data import fetch
from pipeline.data.datasets import DATASETS, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.data.idx import encode_idx, read_idx
from pipeline.errors import PipelineError
from pipeline.stages import split, stats, validate
from tests.helpers import VALIDATION_ENTRY, synthetic_digits

PARAMS = parse_params({"split": {"stratify": True}})


@pytest.fixture(scope="module")
def clean() -> tuple[validate.RawData, np.ndarray, np.ndarray]:
    train_x, train_y = synthetic_digits(600, seed=0)
    test_x, test_y = synthetic_digits(200, seed=1)
    train_index, valid_index = split.split_indices(
        train_y, SplitParams(valid_fraction=0.1, seed=0, stratify=True)
    )
    return validate.RawData(train_x, train_y, test_x, test_y), train_index, valid_index


def check(
    raw, train_index, valid_index, params=PARAMS, stats_override=None, images=None, docs_dir=None
):
    """Run every check like the stage does; returns the report."""
    if images is None:
        images = validate.image_table(raw, train_index, valid_index)
    pixel_stats = {
        **stats.pixel_stats(torch.from_numpy(raw.train_images.astype(np.uint8))),
        "count": len(raw.train_labels),
    }
    pixel_stats.update(stats_override or {})
    expected = validate.expected_for(params, len(raw.train_labels), len(raw.test_labels))
    return validate.validate(images, raw.train_labels, pixel_stats, expected, docs_dir)


def failed(report) -> set[str]:
    return {entry["name"] for entry in validate.failures(report)}


def test_clean_data_passes_every_expectation(clean):
    report = check(*clean)
    assert failed(report) == set() and report["success"] is True
    assert report["counts"] == report["expected_counts"] == {"train": 540, "valid": 60, "test": 200}
    names = [entry["name"] for entry in report["expectations"]]
    assert len(names) == len(set(names)) == 29
    observed = {entry["name"]: entry["observed"] for entry in report["expectations"]}
    assert observed["rows_train"] == 540 and observed["rows_test"] == 200
    assert report["reported"] == {"test_train_duplicates": 0}


def labels_changed(raw, positions, value):
    labels = raw.train_labels.copy()
    labels[positions] = value
    return replace(raw, train_labels=labels)


def test_out_of_range_label(clean):
    raw, train_index, valid_index = clean
    report = check(labels_changed(raw, train_index[0], 11), train_index, valid_index)
    assert failed(report) == {"labels_in_range"}
    entry = next(e for e in report["expectations"] if e["name"] == "labels_in_range")
    assert entry["observed"]["unexpected_count"] == 1
    assert entry["observed"]["examples"][0] == {
        "label": 11,
        "split": "train",
        "index": int(train_index[0]),
    }


def test_missing_class(clean):
    raw, train_index, valid_index = clean
    threes_in_valid = valid_index[raw.train_labels[valid_index] == 3]
    report = check(labels_changed(raw, threes_in_valid, 4), train_index, valid_index)
    # A class that is absent is also 9 points below its share of the training set.
    assert failed(report) == {"all_classes_valid", "class_share_within_tolerance"}
    entry = next(e for e in report["expectations"] if e["name"] == "all_classes_valid")
    assert entry["observed"] == {"missing": [3]}


def test_index_in_both_train_and_valid(clean):
    raw, train_index, valid_index = clean
    same_label = train_index[raw.train_labels[train_index] == raw.train_labels[valid_index[0]]][0]
    valid = np.sort(np.append(valid_index[1:], same_label))
    report = check(raw, train_index, valid)
    # The moved index leaves its old one unassigned, and its image now sits in both splits.
    assert failed(report) == {
        "no_index_in_train_and_valid",
        "train_valid_cover_training_set",
        "no_shared_content_train_valid",
    }


def test_union_of_train_and_valid_must_be_the_whole_training_set(clean):
    raw, train_index, valid_index = clean
    report = check(raw, train_index[1:], valid_index)
    assert failed(report) == {"rows_train", "train_valid_cover_training_set"}


def test_index_outside_the_training_set(clean):
    raw, train_index, valid_index = clean
    valid = valid_index.copy()
    valid[-1] = 600
    report = check(raw, train_index, valid)
    assert {"train_valid_cover_training_set", "no_nulls_label", "no_nulls_content_hash"} <= failed(
        report
    )


def test_index_twice_in_one_split(clean):
    raw, train_index, valid_index = clean
    train = train_index.copy()
    train[1] = train[0]
    report = check(raw, train, valid_index)
    assert "unique_index_per_split" in failed(report)
    assert "train_valid_cover_training_set" in failed(report)  # the overwritten index is lost


def test_wrong_count(clean):
    raw, train_index, valid_index = clean
    report = check(
        raw, train_index, valid_index, params=parse_params({"split": {"valid_fraction": 0.2}})
    )
    assert failed(report) == {"rows_train", "rows_valid"}
    assert report["expected_counts"] == {"train": 480, "valid": 120, "test": 200}
    assert report["counts"] == {"train": 540, "valid": 60, "test": 200}


def test_named_datasets_have_their_published_sizes_custom_data_its_headers(clean):
    raw = clean[0]
    assert {name: validate.official_sizes(name, raw) for name in DATASETS} == {
        "mnist": (60_000, 10_000),
        "fashion-mnist": (60_000, 10_000),
        "kmnist": (60_000, 10_000),
    }
    assert validate.official_sizes("custom", raw) == (600, 200)


def test_blank_image(clean):
    raw, train_index, valid_index = clean
    images = raw.train_images.copy()
    images[train_index[5]] = 0
    report = check(replace(raw, train_images=images), train_index, valid_index)
    assert failed(report) == {"no_blank_images"}


@pytest.mark.parametrize("value, name", [(300, "pixel_max_in_range"), (-1, "pixel_min_in_range")])
def test_pixel_out_of_range(clean, value, name):
    raw, train_index, valid_index = clean
    images = raw.train_images.astype(np.int16)  # IDX can hold int16; the reader keeps it as is
    images[valid_index[0], 3, 3] = value
    report = check(replace(raw, train_images=images), train_index, valid_index)
    assert failed(report) == {name}


def test_same_image_in_train_and_valid(clean):
    raw, train_index, valid_index = clean
    images = raw.train_images.copy()
    source = valid_index[0]
    target = train_index[raw.train_labels[train_index] == raw.train_labels[source]][0]
    images[target] = images[source]
    report = check(replace(raw, train_images=images), train_index, valid_index)
    assert failed(report) == {"no_shared_content_train_valid"}
    entry = next(e for e in report["expectations"] if e["name"] == "no_shared_content_train_valid")
    assert entry["observed"]["unexpected_count"] == 2  # the image on both sides


def test_test_image_duplicating_a_training_image_is_reported_not_failed(clean):
    raw, train_index, valid_index = clean
    test_images = raw.test_images.copy()
    test_images[:3] = raw.train_images[[train_index[0], train_index[1], valid_index[0]]]
    report = check(replace(raw, test_images=test_images), train_index, valid_index)
    assert failed(report) == set()
    assert report["reported"] == {"test_train_duplicates": 3}


def test_class_share_out_of_tolerance(clean):
    raw, train_index, valid_index = clean
    ones_in_valid = valid_index[raw.train_labels[valid_index] == 1]
    report = check(labels_changed(raw, ones_in_valid[:3], 2), train_index, valid_index)
    assert failed(report) == {"class_share_within_tolerance"}
    entry = next(e for e in report["expectations"] if e["name"] == "class_share_within_tolerance")
    assert {(row["split"], row["label"]) for row in entry["observed"]["examples"]} == {
        ("valid", 1),
        ("valid", 2),
    }


def test_class_share_tolerance_comes_from_params(clean):
    raw, train_index, valid_index = clean
    ones_in_valid = valid_index[raw.train_labels[valid_index] == 1]
    loose = parse_params({"split": {"stratify": True}, "validate": {"class_share_tolerance": 0.1}})
    assert (
        failed(
            check(labels_changed(raw, ones_in_valid[:3], 2), train_index, valid_index, params=loose)
        )
        == set()
    )


@pytest.mark.parametrize("column", ["label", "pixel_mean", "content_hash", "nonzero_pixels"])
def test_null_in_the_table(clean, column):
    images = validate.image_table(*clean)
    images.loc[7, column] = pd.NA
    assert failed(check(*clean, images=images)) == {f"no_nulls_{column}"}


@pytest.mark.parametrize(
    "override, name",
    [
        ({"mean": 0.0}, "stats_mean_plausible"),
        ({"mean": 1.5}, "stats_mean_plausible"),
        ({"std": 0.0}, "stats_std_plausible"),
        ({"std": 0.75}, "stats_std_plausible"),
        ({"std": None}, "stats_std_present"),
        ({"count": 599}, "stats_count_matches"),
    ],
)
def test_bad_stats(clean, override, name):
    assert failed(check(*clean, stats_override=override)) == {name}


def test_stats_of_the_wrong_type_fail_with_the_error(clean):
    report = check(*clean, stats_override={"mean": "high"})
    assert failed(report) == {"stats_mean_plausible"}
    entry = next(e for e in report["expectations"] if e["name"] == "stats_mean_plausible")
    assert isinstance(entry["observed"], str) and entry["observed"].startswith("error:")


def test_checks_hold_for_other_ten_class_datasets(clean):
    """Nothing is digit-specific: inverted images with shuffled class ids pass the same checks."""
    raw, train_index, valid_index = clean
    relabel = np.array([3, 7, 0, 9, 1, 5, 2, 8, 4, 6], dtype=np.uint8)
    other = validate.RawData(
        255 - raw.train_images,
        relabel[raw.train_labels],
        255 - raw.test_images,
        relabel[raw.test_labels],
    )
    assert failed(check(other, train_index, valid_index)) == set()


# ---- the stage: files in, report and Data Docs out, non-zero exit on failure ----


def prepare(workdir: Path, mirror: Path) -> None:
    params = parse_params({"data": {"name": "custom"}, "split": {"stratify": True}})
    fetch.download(params, paths.RAW_DIR, {"MNIST_MIRROR": str(mirror)})
    stats.main(params)
    split.main(params)


def test_stage_passes_and_writes_report_and_data_docs(
    workdir, synthetic_mirror, capfd, monkeypatch
):
    prepare(workdir, synthetic_mirror)

    def no_network(*args, **kwargs):
        raise AssertionError("validate must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    capfd.readouterr()
    validate.main(parse_params({"data": {"name": "custom"}, "split": {"stratify": True}}))
    err = capfd.readouterr().err
    assert "Calculating Metrics" not in err and "%|" not in err  # no GX progress bars in CI logs
    assert "29/29 expectations passed on 540 train, 60 valid, 200 test" in err
    report = artifacts.read_validation()
    assert report["success"] is True and report["counts"] == {
        "train": 540,
        "valid": 60,
        "test": 200,
    }
    assert VALIDATION_ENTRY in report["expectations"]  # what conftest's trained_workdir writes
    index = paths.DATA_DOCS_DIR / "index.html"
    offline = paths.DATA_DOCS_DIR / "offline.html"
    assert report["data_docs"] == {"index": str(index), "offline_index": str(offline)}
    html, offline_html = index.read_text(), offline.read_text()
    assert "<script" not in offline_html
    for table in ("images", "class_shares", "training_indices", "stats"):
        assert (
            f"expectations/{table}.html" in html
            and f'href="expectations/{table}.html"' in offline_html
        )
        pages = list((paths.DATA_DOCS_DIR / "validations" / table).rglob("*.html"))
        relative = pages[0].relative_to(paths.DATA_DOCS_DIR).as_posix()
        assert len(pages) == 1 and relative in html and f'href="{relative}"' in offline_html
    assert offline_html.count("passed:") == 4
    assert (
        "rows_train: train has exactly 540 images"
        in (paths.DATA_DOCS_DIR / "expectations" / "images.html").read_text()
    )
    assert [
        p.name for p in paths.REPORTS_DIR.iterdir() if p.name.startswith(".")
    ] == []  # no staging left

    # train depends on this file, so the same data must give the same bytes (no GX run times in it);
    # dvc.lock hashes Data Docs, so theirs must not change either (no clock, no uuid4).
    first = paths.DATA_VALIDATION_FILE.read_bytes()
    docs = {path: path.read_bytes() for path in paths.DATA_DOCS_DIR.rglob("*") if path.is_file()}
    validate.main(parse_params({"data": {"name": "custom"}, "split": {"stratify": True}}))
    assert paths.DATA_VALIDATION_FILE.read_bytes() == first
    again = {path: path.read_bytes() for path in paths.DATA_DOCS_DIR.rglob("*") if path.is_file()}
    assert sorted(again) == sorted(docs)
    assert [path for path in docs if again[path] != docs[path]] == []


def test_stable_page_fixes_gx_render_stamps_and_keeps_element_ids_apart() -> None:
    ids = ["d20ee55d-3bcb-4789-8150-a45b3a143c3a", "24576954-6992-427e-bef4-34225beec238"]
    page = (
        '<img src="logo.png?d=20261207T140012.024409Z"><span>20261207T140011.860427Z</span>'
        f'<a href="#body-{ids[0]}"></a><div id="body-{ids[0]}"></div><div id="body-{ids[1]}">'
    )
    assert validate.stable_page(page) == (
        '<img src="logo.png?d=19700101T000000.000000Z"><span>19700101T000000.000000Z</span>'
        '<a href="#body-id1"></a><div id="body-id1"></div><div id="body-id2">'
    )


@pytest.mark.parametrize("blocker", ["file", "read-only"])
def test_stage_fails_in_one_line_when_reports_cannot_take_the_data_docs(
    workdir, synthetic_mirror, monkeypatch, blocker
):
    """A file where reports/ should be, or a reports/ that refuses the staging folder (refused by
    a patch: chmod does not stop root); what is there stays."""
    prepare(workdir, synthetic_mirror)
    params = parse_params({"data": {"name": "custom"}, "split": {"stratify": True}})
    if blocker == "file":
        paths.REPORTS_DIR.write_text("a file a user left here\n")
        expected = "reports is a file, not a folder; move it away"
    else:
        validate.main(params)  # docs that the failed rerun must leave alone

        def refuse(*args: object, **kwargs: object) -> str:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(validate.tempfile, "mkdtemp", refuse)
        expected = "reports is not writable (Permission denied); fix its permissions"
    before = {p: p.read_bytes() for p in Path().rglob("*") if p.is_file()}
    with pytest.raises(PipelineError) as raised:
        validate.main(params)
    assert str(raised.value) == f"cannot write reports: {expected} and rerun the stage"
    assert {p: p.read_bytes() for p in Path().rglob("*") if p.is_file()} == before


def test_stage_stops_on_a_label_of_11_and_names_the_expectation(workdir, synthetic_mirror, capfd):
    prepare(workdir, synthetic_mirror)
    labels = read_idx(paths.RAW_DIR / TRAIN_LABELS)
    labels[17] = 11
    (paths.RAW_DIR / TRAIN_LABELS).write_bytes(encode_idx(labels))
    capfd.readouterr()
    with pytest.raises(PipelineError) as raised:
        validate.main(parse_params({"data": {"name": "custom"}, "split": {"stratify": True}}))
    message = str(raised.value)
    assert "labels_in_range" in message and "\n" not in message
    err_lines = [
        line for line in capfd.readouterr().err.splitlines() if line.startswith("failed: ")
    ]
    assert len(err_lines) == 1 and err_lines[0].startswith("failed: labels_in_range ")
    report = json.loads(paths.DATA_VALIDATION_FILE.read_text())
    assert report["success"] is False  # the report and docs are written for a person to inspect
    assert (paths.DATA_DOCS_DIR / "index.html").is_file()
    assert "<td>images</td><td>FAILED: " in (paths.DATA_DOCS_DIR / "offline.html").read_text()


def test_stage_fails_a_truncated_named_dataset_on_the_row_counts(workdir, synthetic_mirror):
    """600 training and 200 test images called mnist: a truncated copy, consistent in itself."""
    prepare(workdir, synthetic_mirror)
    with pytest.raises(
        PipelineError, match="data validation failed: rows_train, rows_valid, rows_test, "
    ):
        validate.main(parse_params({"data": {"name": "mnist"}, "split": {"stratify": True}}))
    report = json.loads(paths.DATA_VALIDATION_FILE.read_text())
    assert report["expected_counts"] == {"train": 54_000, "valid": 6_000, "test": 10_000}
    assert {"train_valid_cover_training_set", "stats_count_matches"} <= failed(report)


def test_stage_refuses_custom_images_and_labels_that_disagree(workdir, synthetic_mirror):
    prepare(workdir, synthetic_mirror)
    images = read_idx(paths.RAW_DIR / TRAIN_IMAGES)
    (paths.RAW_DIR / TRAIN_IMAGES).write_bytes(encode_idx(images[:-1]))
    with pytest.raises(
        PipelineError,
        match=r"\(599, 28, 28\) and train-labels-idx1-ubyte.gz \(600,\) are not N images",
    ):
        validate.main(parse_params({"data": {"name": "custom"}, "split": {"stratify": True}}))


def test_stage_reports_missing_inputs_with_the_fix(workdir, synthetic_mirror):
    fetch.download(
        parse_params({"data": {"name": "custom"}}),
        paths.RAW_DIR,
        {"MNIST_MIRROR": str(synthetic_mirror)},
    )
    with pytest.raises(
        PipelineError, match=r"data/split/train.npy is missing; run the split stage first"
    ):
        validate.main(parse_params({"data": {"name": "custom"}}))
