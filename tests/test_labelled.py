"""pipeline/data/labelled.py: `labelled add` (add, skip, refuse, every bad input's one line, nothing
half written), and the dataset version it makes: the train split grows, validation, test and the
statistics stay official, validate counts the new version, and every read checks the MD5s."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import artifacts, atomic, paths
from pipeline.__main__ import main as cli
from pipeline.config import parse_params
from pipeline.data import labelled
from pipeline.data.datasets import TRAIN_IMAGES, TRAIN_LABELS
from pipeline.data.idx import encode_idx
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.registry import mainline
from pipeline.stages import split, stats, train, validate
from tests.helpers import empty_checkout, git, synthetic_digits

PLAIN_IMAGES = TRAIN_IMAGES.removesuffix(".gz")
PLAIN_LABELS = TRAIN_LABELS.removesuffix(".gz")


def write_batch(
    inbox: Path,
    name: str,
    count: int = 30,
    seed: int = 100,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    compress: bool = True,
) -> Path:
    """A batch subfolder of the inbox with the two canonical training files."""
    x, y = synthetic_digits(count, seed)
    folder = inbox / name
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if compress else ".gz"
    (folder / TRAIN_IMAGES.removesuffix(suffix)).write_bytes(
        encode_idx(x if images is None else images, compress)
    )
    (folder / TRAIN_LABELS.removesuffix(suffix)).write_bytes(
        encode_idx(y if labels is None else labels, compress)
    )
    return folder


def written(root: Path) -> list[str]:
    """Every file under data/ (temp files included), relative to root."""
    data = root / "data"
    return sorted(p.relative_to(root).as_posix() for p in data.rglob("*") if p.is_file())


@pytest.fixture
def project(workdir: Path) -> Path:
    return workdir


# ---- add, skip, refuse -----------------------------------------------------------------------


def test_add_copies_the_files_and_records_the_batch_then_skips_it(project, capsys):
    inbox = project.parent / "inbox"
    folder = write_batch(inbox, "2024-06-01", count=30)
    assert labelled.add(inbox) == labelled.ADDED
    out = capsys.readouterr().out
    assert "added 2024-06-01: 30 images" in out
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        stored = project / "data/labelled/2024-06-01" / name
        assert stored.read_bytes() == (folder / name).read_bytes()
    [batch] = labelled.read_manifest()
    assert batch.name == "2024-06-01" and batch.count == 30
    assert batch.images_md5 == hashlib.md5((folder / TRAIN_IMAGES).read_bytes()).hexdigest()
    assert batch.labels_md5 == hashlib.md5((folder / TRAIN_LABELS).read_bytes()).hexdigest()
    assert batch.per_class == {str(c): 3 for c in range(10)}  # synthetic_digits: count % 10
    assert batch.added.endswith("+00:00")

    manifest = paths.LABELLED_MANIFEST.read_bytes()
    assert labelled.add(inbox) == labelled.NOTHING_NEW
    assert capsys.readouterr().out.splitlines()[0] == (
        "skipped 2024-06-01: already added as batch '2024-06-01'"
    )
    assert paths.LABELLED_MANIFEST.read_bytes() == manifest

    # The same files under another name are the same batch: never counted twice.
    write_batch(inbox, "2024-06-01-copy", count=30)
    assert labelled.add(inbox) == labelled.NOTHING_NEW
    assert "skipped 2024-06-01-copy: already added as batch '2024-06-01'" in capsys.readouterr().out

    write_batch(inbox, "2024-07-01", count=20, seed=7)
    assert labelled.add(inbox) == labelled.ADDED
    assert [b.name for b in labelled.read_manifest()] == ["2024-06-01", "2024-07-01"]


def test_a_known_batch_name_with_other_files_is_refused(project):
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1", seed=1)
    assert labelled.add(inbox) == labelled.ADDED
    before = written(project)
    manifest = paths.LABELLED_MANIFEST.read_bytes()
    write_batch(inbox, "b1", seed=2)
    with pytest.raises(
        PipelineError,
        match="batch 'b1' is already in data/labelled.json with "
        "other files .* give the new files a new batch name",
    ):
        labelled.add(inbox)
    assert written(project) == before and paths.LABELLED_MANIFEST.read_bytes() == manifest


def test_uncompressed_files_are_accepted_and_kept_as_they_are(project):
    inbox = project.parent / "inbox"
    write_batch(inbox, "raw", compress=False)
    assert labelled.add(inbox) == labelled.ADDED
    [batch] = labelled.read_manifest()
    assert (batch.images, batch.labels) == (PLAIN_IMAGES, PLAIN_LABELS)
    images, labels = labelled.load()
    assert images.shape == (30, 28, 28) and labels.shape == (30,)


def test_the_cli_exit_codes_and_the_inbox_from_the_environment(project, monkeypatch, capsys):
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1")
    monkeypatch.setenv(labelled.INBOX_ENV, str(inbox))
    assert cli(["labelled", "add"]) == 0
    assert cli(["labelled", "add"]) == 3
    assert cli(["labelled", "add", str(project / "nowhere")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    monkeypatch.delenv(labelled.INBOX_ENV)
    assert cli(["labelled", "add"]) == 1
    assert f"set {labelled.INBOX_ENV}" in capsys.readouterr().err


def test_an_empty_inbox_has_nothing_new(project):
    (project.parent / "inbox").mkdir()
    assert labelled.add(project.parent / "inbox") == labelled.NOTHING_NEW
    assert not paths.LABELLED_MANIFEST.exists()


# ---- bad input: one line naming the file, the cause and the fix; nothing written --------------


def _corrupt_gzip(folder: Path) -> str:
    data = (folder / TRAIN_IMAGES).read_bytes()
    (folder / TRAIN_IMAGES).write_bytes(data[: len(data) // 2])
    return f"{TRAIN_IMAGES}: corrupt or truncated gzip stream"


def _not_idx(folder: Path) -> str:
    (folder / TRAIN_LABELS).write_bytes(gzip.compress(b"hello, world"))
    return f"{TRAIN_LABELS}: not an IDX file"


def _wrong_shape(folder: Path) -> str:
    (folder / TRAIN_IMAGES).write_bytes(encode_idx(synthetic_digits(30, 0, size=16)[0]))
    return f"{TRAIN_IMAGES}: expected uint8 images [N, 28, 28], got uint8 [30, 16, 16]"


def _label_11(folder: Path) -> str:
    labels = synthetic_digits(30, 100)[1]
    labels[4] = 11
    (folder / TRAIN_LABELS).write_bytes(encode_idx(labels))
    return f"{TRAIN_LABELS}: label 11 at index 4 is not a class id 0-9"


def _count_mismatch(folder: Path) -> str:
    (folder / TRAIN_LABELS).write_bytes(encode_idx(synthetic_digits(29, 100)[1]))
    return f"{TRAIN_IMAGES} has 30 images but {TRAIN_LABELS} has 29 labels"


def _no_images(folder: Path) -> str:
    (folder / TRAIN_IMAGES).write_bytes(encode_idx(np.zeros((0, 28, 28), np.uint8)))
    (folder / TRAIN_LABELS).write_bytes(encode_idx(np.zeros(0, np.uint8)))
    return f"{TRAIN_IMAGES}: holds no images"


def _labels_missing(folder: Path) -> str:
    (folder / TRAIN_LABELS).unlink()
    return f"{TRAIN_LABELS}: missing"


def _float_labels(folder: Path) -> str:
    (folder / TRAIN_LABELS).write_bytes(encode_idx(np.zeros(30, ">f4")))
    return f"{TRAIN_LABELS}: expected uint8 labels [N], got float32 [30]"


def _both_forms(folder: Path) -> str:
    (folder / PLAIN_IMAGES).write_bytes(gzip.decompress((folder / TRAIN_IMAGES).read_bytes()))
    return f"holds both {TRAIN_IMAGES} and {PLAIN_IMAGES}; keep one of them"


@pytest.mark.parametrize(
    "spoil",
    [
        _corrupt_gzip,
        _not_idx,
        _wrong_shape,
        _label_11,
        _count_mismatch,
        _no_images,
        _labels_missing,
        _float_labels,
        _both_forms,
    ],
)
def test_a_bad_batch_is_one_error_line_and_nothing_is_written(project, capsys, spoil):
    inbox = project.parent / "inbox"
    write_batch(inbox, "a-good-one", seed=5)  # sorted first: checked, but not written either
    cause = spoil(write_batch(inbox, "b-bad"))
    assert cli(["labelled", "add", str(inbox)]) == labelled.FAILED
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(f"error: {inbox / 'b-bad'}"), line
    assert cause in line
    assert line.endswith("run labelled add again"), line
    assert not (project / "data").exists()


def test_a_missing_inbox_and_files_outside_a_batch_folder(project):
    with pytest.raises(PipelineError, match="the labelled inbox does not exist"):
        labelled.add(project / "nowhere")
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1")
    (inbox / "b1" / TRAIN_LABELS).rename(inbox / TRAIN_LABELS)
    with pytest.raises(PipelineError, match="batch files lie in the inbox itself; move them"):
        labelled.add(inbox)
    assert not (project / "data").exists()


def test_a_bad_batch_name_is_refused(project):
    inbox = project.parent / "inbox"
    write_batch(inbox, "june batch")
    with pytest.raises(PipelineError, match="june batch: a batch name uses only letters"):
        labelled.add(inbox)


def test_a_run_killed_before_the_manifest_leaves_no_partial_file_and_reruns(project, monkeypatch):
    """The files are written aside and renamed, the manifest last: a kill at any point leaves
    whole files or none, and a manifest that names only whole ones."""
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1")
    real_replace = atomic.os.replace

    def killed(src, dst):
        if Path(dst).name == TRAIN_LABELS:  # the batch's second file
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        labelled.add(inbox)
    assert written(project) == [f"data/labelled/b1/{TRAIN_IMAGES}"]  # no temp file, no manifest
    assert labelled.read_manifest() == []
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert labelled.add(inbox) == labelled.ADDED
    assert written(project) == [
        "data/labelled.json",
        f"data/labelled/b1/{TRAIN_IMAGES}",
        f"data/labelled/b1/{TRAIN_LABELS}",
    ]


# ---- reading: an absent or empty manifest is the official data; the MD5s are checked ----------


def test_an_absent_or_empty_manifest_means_no_batches(project):
    assert labelled.load() is None
    paths.LABELLED_MANIFEST.parent.mkdir(parents=True)
    paths.LABELLED_MANIFEST.write_text("")
    assert labelled.load() is None
    paths.LABELLED_MANIFEST.write_text('{"batches": []}\n')
    assert labelled.load() is None
    assert labelled.version([]) == {"labelled_batches": 0, "labelled_images": 0, "batches": []}


@pytest.mark.parametrize("role", ["images", "labels"])
def test_a_file_that_differs_from_the_manifest_is_refused_where_it_is_read(project, role):
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1")
    labelled.add(inbox)
    name = TRAIN_IMAGES if role == "images" else TRAIN_LABELS
    stored = paths.LABELLED_DIR / "b1" / name
    stored.write_bytes((inbox / "b1" / name).read_bytes() + b"\0")
    with pytest.raises(PipelineError) as caught:
        labelled.load()
    message = str(caught.value)
    assert message.startswith(f"{stored}: md5 ")
    assert "that data/labelled.json records for batch 'b1'; run `dvc pull data/labelled`" in message
    stored.unlink()
    with pytest.raises(PipelineError, match=r"cannot read .* lists batch 'b1'; run `dvc pull"):
        labelled.load()


# ---- the dataset version in the stages --------------------------------------------------------

PARAMS = parse_params({"data": {"name": "custom"}, "split": {"stratify": True}})


def prepare(mirror: Path) -> None:
    from pipeline.data import fetch

    fetch.download(PARAMS, paths.RAW_DIR, {"MNIST_MIRROR": str(mirror)})
    stats.main(PARAMS)
    split.main(PARAMS)


def test_batches_join_the_train_split_only(project, synthetic_mirror):
    prepare(synthetic_mirror)
    official_train = artifacts.read_index(paths.TRAIN_INDEX_FILE)
    official_valid = paths.VALID_INDEX_FILE.read_bytes()
    official_stats = paths.STATS_FILE.read_bytes()

    inbox = project.parent / "inbox"
    write_batch(inbox, "b1", count=30)
    write_batch(inbox, "b2", count=20, seed=9)
    labelled.add(inbox)
    stats.main(PARAMS)
    split.main(PARAMS)
    assert paths.STATS_FILE.read_bytes() == official_stats  # official images only
    assert paths.VALID_INDEX_FILE.read_bytes() == official_valid
    trained = artifacts.read_index(paths.TRAIN_INDEX_FILE)
    np.testing.assert_array_equal(trained, np.concatenate([official_train, np.arange(600, 650)]))
    summary = json.loads(paths.SPLIT_SUMMARY_FILE.read_text())
    assert summary["counts"] == {"train": 540 + 50, "valid": 60}

    inputs = train.load_inputs(PARAMS, torch.device("cpu"))
    assert len(inputs.train.labels) == 590 and len(inputs.valid.labels) == 60
    x, y = synthetic_digits(20, 9)
    np.testing.assert_array_equal(inputs.train.images[-20:].numpy(), x)
    np.testing.assert_array_equal(inputs.train.labels[-20:].numpy(), y)
    assert set(labelled.md5s(labelled.read_manifest())) <= set(inputs.dataset_md5)
    data = load_dataset(paths.RAW_DIR, 28, labelled.load())
    assert len(data.test_labels) == 200  # the test set never changes


def test_validate_counts_the_new_version(project, synthetic_mirror):
    prepare(synthetic_mirror)
    inbox = project.parent / "inbox"
    # A batch of sevens only: a skewed batch is allowed (the class shares judge the split's draw).
    x, _ = synthetic_digits(40, 3)
    write_batch(inbox, "sevens", images=x, labels=np.full(40, 7, np.uint8))
    labelled.add(inbox)
    split.main(PARAMS)
    validate.main(PARAMS)
    report = artifacts.read_validation()
    assert report["success"] is True
    assert report["counts"] == {"train": 580, "valid": 60, "test": 200}
    assert report["expected_counts"] == {"train": 580, "valid": 60, "test": 200}
    version = report["dataset_version"]
    assert (version["labelled_batches"], version["labelled_images"]) == (1, 40)
    assert version["batches"][0]["name"] == "sevens"


def test_validate_fails_when_the_split_predates_the_batch(project, synthetic_mirror):
    """A train split without the new images is not this version: rows_train fails."""
    prepare(synthetic_mirror)
    inbox = project.parent / "inbox"
    write_batch(inbox, "b1", count=30)
    labelled.add(inbox)
    with pytest.raises(PipelineError, match="rows_train"):
        validate.main(PARAMS)
    assert artifacts.read_validation()["expected_counts"]["train"] == 570


def test_expected_counts_of_a_version():
    params = parse_params({})
    assert validate.expected_for(params, 60_000, 10_000).rows == {
        "train": 54_000,
        "valid": 6_000,
        "test": 10_000,
    }
    expected = validate.expected_for(params, 60_000, 10_000, labelled_count=1_234)
    assert expected.rows == {"train": 55_234, "valid": 6_000, "test": 10_000}
    assert (expected.training_size, expected.official) == (61_234, 60_000)


# ---- the scheduled job's sequence is the main line ---------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed project on main with this repository's .gitignore and the empty manifest."""
    root = empty_checkout(tmp_path, monkeypatch)
    (root / ".gitignore").write_text(
        (Path(__file__).resolve().parents[1] / ".gitignore").read_text()
    )
    (root / "params.yaml").write_text("train:\n  lr: 0.001\n")
    (root / "data").mkdir()
    (root / "data/labelled.json").write_text('{\n  "batches": []\n}\n')
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "pipeline")
    return root


def test_the_jobs_sequence_is_the_main_line_and_an_uncommitted_batch_a_trial(repo):
    inbox = repo.parent / "inbox"
    write_batch(inbox, "b1")
    assert labelled.add(inbox) == labelled.ADDED
    # Added but not committed: the manifest, a dep of the stages, differs from the commit.
    line = mainline.judge("main", False, {})
    assert not line.may_move and "data/labelled.json differs from commit" in line.reason
    # The batch files themselves are DVC's, never git's: ignored, so not judged.
    assert git("status", "--porcelain", "--untracked-files=all") == "M data/labelled.json"
    # `dvc add data/labelled` writes data/labelled.dvc (its content stands in for DVC's here).
    (repo / "data/labelled.dvc").write_text("outs:\n- path: labelled\n")
    git("add", "data/labelled.json", "data/labelled.dvc")
    git("commit", "-q", "-m", "data: labelled batch b1")
    head = git("rev-parse", "--short=7", "HEAD")
    assert mainline.judge("main", False, {}) == mainline.Line(
        True, f"clean commit {head} of 'main'"
    )
