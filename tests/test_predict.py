"""`python -m pipeline predict`: pictures and IDX files in, the labels evaluate would give out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main as pipeline_main
from pipeline.artifacts import write_ood_reference
from pipeline.data.datasets import TEST_IMAGES, TEST_LABELS
from pipeline.data.idx import encode_idx, read_idx
from pipeline.data.loading import resize
from pipeline.learner.model import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from pipeline.paths import OOD_REFERENCE_FILE
from pipeline.serving import pictures, predict
from pipeline.serving.ood import fit_reference
from pipeline.serving.service import CONTRACT, fit_references
from pipeline.stages.evaluate import evaluate
from tests.helpers import synthetic_digits, train_tiny, write_dataset


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for size in (28, 16):
        paths[size] = folder / f"model{size}.pt"
        save_checkpoint(paths[size], train_tiny(size), {"loss": "cross_entropy", "epoch": 1})
    return paths


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("mirror"), n_train=20, n_test=60, seed=3)


@pytest.fixture(autouse=True)
def restore_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """predict sets MLflow's environment for the rest of its process; here, of the test only."""
    for name in predict.MLFLOW_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = pipeline_main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def expected_predictions(
    model_path: Path, images: np.ndarray, labels: np.ndarray
) -> tuple[list[int], list[float]]:
    """What the evaluate stage reports for these test images."""
    model = model_from_checkpoint(torch.load(model_path, weights_only=True))
    test = (torch.from_numpy(images), torch.from_numpy(labels).long())  # evaluate resizes
    table = evaluate(model, "cross_entropy", test=test, valid=test, batch_size=7).predictions
    return table["predicted"].tolist(), table["confidence"].tolist()


@pytest.mark.parametrize("size", [28, 16])
def test_pngs_cut_from_the_test_set_get_the_labels_evaluate_gives(
    size: int,
    models: dict[int, Path],
    test_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images, labels = read_idx(test_set / TEST_IMAGES)[:12], read_idx(test_set / TEST_LABELS)[:12]
    predicted, confidence = expected_predictions(models[size], images, labels)
    assert len(set(predicted)) > 3, "the tiny model should tell several digits apart"
    paths = []
    for i, image in enumerate(images):
        # Three encodings of the same digit: plain, RGB and ink on paper (inverted) must all agree.
        variant = [
            Image.fromarray(image),
            Image.fromarray(image).convert("RGB"),
            Image.fromarray(255 - image),
        ][i % 3]
        paths.append(tmp_path / f"digit{i}.png")
        variant.save(paths[-1])
    code, lines, err = run_cli([*map(str, paths), "--model", str(models[size]), "--json"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in lines]
    assert [row["input"] for row in rows] == list(map(str, paths))
    assert [row["label"] for row in rows] == predicted
    assert [row["confidence"] for row in rows] == pytest.approx(confidence, abs=1e-5)
    assert all(row["index"] is None for row in rows)


def test_idx_file_gives_one_prediction_per_image(
    models: dict[int, Path], test_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = read_idx(test_set / TEST_IMAGES), read_idx(test_set / TEST_LABELS)
    predicted, confidence = expected_predictions(models[16], images, labels)
    code, lines, err = run_cli([str(test_set / TEST_IMAGES), "--model", str(models[16])], capsys)
    assert code == 0, err
    assert len(lines) == len(images) == 60
    expected = [
        f"{test_set / TEST_IMAGES}[{i}]: {label} (confidence {conf:.4f})"
        for i, (label, conf) in enumerate(zip(predicted, confidence, strict=True))
    ]
    assert lines == expected


def test_inputs_far_from_the_training_digits_are_flagged_with_the_reason(
    models: dict[int, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    model = tmp_path / "model.pt"
    shutil.copy(models[28], model)
    code, lines, err = run_cli(
        [str(test_set / TEST_IMAGES), "--model", str(model), "--json"], capsys
    )
    assert code == 0 and "has no off-distribution reference" in err and "dvc repro train" in err
    assert {json.loads(line)["ood"] for line in lines} == {None}

    train, _ = synthetic_digits(600, seed=0)  # the data train_tiny fitted
    valid, _ = synthetic_digits(200, seed=1)
    reference = fit_reference(torch.from_numpy(train), torch.from_numpy(valid))
    (tmp_path / "ood_reference.json").write_text(json.dumps(reference.to_dict()))
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    digit, _ = synthetic_digits(1, seed=9)
    Image.fromarray(digit[0]).save(tmp_path / "digit.png")
    code, lines, err = run_cli(
        [str(tmp_path / "noise.png"), str(tmp_path / "digit.png"), "--model", str(model), "--json"],
        capsys,
    )
    assert code == 0 and err == ""
    noisy, plain = map(json.loads, lines)
    assert (
        noisy["ood"] is True
        and "standard deviations above the training digits'" in noisy["ood_reason"]
    )
    assert plain["ood"] is False and "ood_reason" not in plain
    code, lines, _ = run_cli([str(tmp_path / "noise.png"), "--model", str(model)], capsys)
    assert lines[0].startswith(f"{tmp_path / 'noise.png'}: ") and "; off-distribution: " in lines[0]


def test_a_large_photo_like_digit_is_cropped_scaled_and_centred() -> None:
    # A dark, tall stroke on grey paper, off-centre in a 90x140 picture.
    paper = np.full((140, 90), 200.0)
    paper[30:110, 10:40] = 40.0
    frame = pictures.picture_to_mnist(paper)
    assert frame.shape == (28, 28) and frame.dtype == np.uint8
    rows, cols = np.nonzero(frame > 0.3 * 255)
    assert rows.max() - rows.min() + 1 == 20, "the longer side fills the 20-pixel box"
    width = cols.max() - cols.min() + 1
    assert 7 <= width <= 9, f"aspect 80:30 kept, got width {width}"
    weights = frame.astype(float)
    centre = (
        (weights.sum(1) @ np.arange(28)) / weights.sum(),
        (weights.sum(0) @ np.arange(28)) / weights.sum(),
    )
    assert centre == pytest.approx((13.5, 13.5), abs=0.6)
    assert frame[0].max() == 0 and frame[:, 0].max() == 0, "the paper becomes black background"


def test_bright_digit_on_dark_ground_is_not_inverted() -> None:
    ground = np.zeros((50, 50))
    ground[10:40, 20:30] = 250.0
    frame = pictures.picture_to_mnist(ground)
    assert frame[14, 14] > 200 and frame[0, 0] == 0


def test_the_edge_median_is_numpys_median_of_the_edge_pixels() -> None:
    """pictures.border_median replaces np.median for speed; the frames must not move."""
    rng = np.random.default_rng(0)
    for shape in [(28, 28), (27, 31), (5, 5), (1, 7), (100, 3)]:
        for _ in range(50):
            image = rng.integers(0, 256, shape) * rng.random()
            edge = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            assert pictures.border_median(image) == float(np.median(edge))


def test_a_picture_is_read_upright_as_its_exif_orientation_says() -> None:
    """A phone stores a portrait photo sideways with an EXIF orientation; 6 means "turn it 90
    degrees clockwise to show it"."""
    import io

    upright = np.zeros((40, 30), dtype=np.uint8)
    upright[5:35, 12:16] = 255  # a one: a tall bar
    upright[5:9, 8:16] = 255  # with a flag at the top left

    def png(image: Image.Image, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **options)
        return buffer.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    read = pictures.decode_picture(png(sideways, exif=exif))
    assert np.array_equal(read, upright.astype(np.float64))
    assert np.array_equal(pictures.decode_picture(png(Image.fromarray(upright))), read)


def test_16_bit_and_transparent_pictures_are_read_by_their_range(tmp_path: Path) -> None:
    sixteen = np.zeros((40, 40), dtype=np.uint16)
    sixteen[5:35, 15:25] = 65535
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    grey = pictures.decode_picture((tmp_path / "deep.png").read_bytes())
    assert grey.max() == pytest.approx(255.0) and grey.min() == 0.0
    # Black ink on a transparent canvas, as drawing apps export it: the canvas reads as white paper.
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[5:35, 15:25] = (0, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "ink.png")
    grey = pictures.decode_picture((tmp_path / "ink.png").read_bytes())
    assert grey[0, 0] == 255.0 and grey[20, 20] == 0.0


def test_bad_inputs_are_reported_one_by_one_and_the_rest_still_predicted(
    models: dict[int, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(read_idx(test_set / TEST_IMAGES)[0]).save(good)
    text = tmp_path / "notes.txt"
    text.write_text("not a digit\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 48), 255).save(blank)
    labels_file = test_set / TEST_LABELS
    broken_idx = tmp_path / "broken-idx3-ubyte"
    broken_idx.write_bytes(encode_idx(np.zeros((3, 4, 4), np.uint8), compress=False)[:-5])
    empty_idx = tmp_path / "empty-idx3-ubyte"
    empty_idx.write_bytes(encode_idx(np.zeros((2, 0, 0), np.uint8)))
    missing = tmp_path / "missing.png"
    inputs = [text, good, truncated, missing, blank, labels_file, broken_idx, empty_idx, good]
    code, lines, err = run_cli([*map(str, inputs), "--model", str(models[28])], capsys)
    assert code == 1
    assert [line.split(":")[0] for line in lines] == [str(good), str(good)]
    errors = [
        line
        for line in err.splitlines()
        if not line.startswith("warning: this model has no off-distribution")
    ]
    assert len(errors) == 8  # seven bad inputs, then the summary
    for path, words in [
        (text, "not a picture"),
        (truncated, "damaged or unsupported picture"),
        (missing, "cannot read it"),
        (blank, "no digit found"),
        (labels_file, "not uint8 images"),
        (broken_idx, "truncated"),
        (empty_idx, "holds empty images of 0x0 pixels"),
    ]:
        assert any(line.startswith(f"error: {path}: ") and words in line for line in errors), (
            path,
            err,
        )
    assert errors[-1] == "error: 7 of 9 inputs could not be predicted (see above)"


def test_missing_or_pickled_model_is_a_clear_error(
    tmp_path: Path, test_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = run_cli(
        [str(test_set / TEST_IMAGES), "--model", str(tmp_path / "none.pt")], capsys
    )
    assert (code, lines) == (1, [])
    assert err.startswith(f"error: {tmp_path / 'none.pt'} not found")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mnist-mlp/1", "payload": Path("x")}, evil)
    code, lines, err = run_cli([str(test_set / TEST_IMAGES), "--model", str(evil)], capsys)
    assert (code, lines) == (1, [])
    assert "weights_only loading refuses" in err and len(err.splitlines()) == 1


@pytest.fixture
def registry(mlflow_workdir: Path, models: dict[int, Path]) -> str:
    """A registered version of the 16-pixel model, logged as train logs it, with alias champion."""
    import mlflow

    from pipeline.registry import tracking
    from pipeline.serving import registration

    tracking.configure()
    train, _ = synthetic_digits(300, seed=0)
    valid, _ = synthetic_digits(100, seed=1)
    model = model_from_checkpoint(load_checkpoint(models[16]))
    references = fit_references(
        model,
        "cross_entropy",
        resize(torch.from_numpy(train), 16),
        resize(torch.from_numpy(valid), 16),
    )
    reference = references.ood
    # beside the checkpoint too, so predict checks the file's inputs as the registry's
    write_ood_reference(reference.to_dict(), models[16].with_name(OOD_REFERENCE_FILE.name))
    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run() as run:
        info = registration.log_model(model, "cross_entropy", references, "mnist-mlp")
    mlflow.MlflowClient().set_registered_model_alias(
        "mnist-mlp", "champion", str(info.registered_model_version)
    )
    return run.info.run_id


def test_registered_champion_predicts_like_the_checkpoint(
    registry: str, models: dict[int, Path], test_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = str(test_set / TEST_IMAGES)
    code, from_file, err = run_cli([images, "--model", str(models[16]), "--json"], capsys)
    assert code == 0, err
    code, from_registry, err = run_cli(
        [images, "--model", "models:/mnist-mlp@champion", "--json"], capsys
    )
    assert code == 0, err
    assert len(from_registry) == 60
    assert [json.loads(r)["label"] for r in from_registry] == [
        json.loads(r)["label"] for r in from_file
    ]
    assert [json.loads(r)["confidence"] for r in from_registry] == pytest.approx(
        [json.loads(r)["confidence"] for r in from_file], abs=1e-5
    )
    assert [json.loads(r)["ood"] for r in from_registry] == [
        json.loads(r)["ood"] for r in from_file
    ]


def test_a_logged_model_answers_with_the_code_it_was_logged_with(registry: str) -> None:
    """The model's own copy of the package, as `mlflow models serve` runs it: a champion logged
    before a module moved still loads, and this process keeps its own package afterwards."""
    import sys

    import pipeline
    from pipeline.serving.predict import load_logged

    answerer = load_logged("models:/mnist-mlp@champion")
    loaded_from = Path(type(answerer).request_rows.__code__.co_filename)
    assert "artifacts" in loaded_from.parts and "code" in loaded_from.parts, loaded_from
    assert Path(pipeline.__file__).parent not in loaded_from.parents
    assert sys.modules["pipeline"] is pipeline


def test_unknown_alias_and_pickled_logged_models_are_refused(
    registry: str, models: dict[int, Path], test_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    images = str(test_set / TEST_IMAGES)
    code, lines, err = run_cli([images, "--model", "models:/mnist-mlp@nobody"], capsys)
    assert (code, lines) == (1, [])
    assert (
        err.startswith("error: cannot find models:/mnist-mlp@nobody") and len(err.splitlines()) == 1
    )
    with mlflow.start_run():
        for name, form in (("pickled", "pickle"), ("raw-scores", "pt2")):
            mlflow.pytorch.log_model(
                model_from_checkpoint(load_checkpoint(models[16])),
                name=name,
                registered_model_name=name,
                serialization_format=form,
                input_example=np.zeros((2, 256), np.float32),
                pip_requirements=["torch"],
                # the pickled one claims the contract, to reach MLflow's own refusal
                metadata={"contract": CONTRACT} if form == "pickle" else None,
            )
    capsys.readouterr()
    code, lines, err = run_cli([images, "--model", "models:/raw-scores/1"], capsys)
    assert (code, lines) == (1, [])
    assert "was logged before the labelled service" in err and len(err.splitlines()) == 1
    code, lines, err = run_cli([images, "--model", "models:/pickled/1"], capsys)
    assert (code, lines) == (1, [])
    assert err.startswith(
        "error: cannot load models:/pickled/1 (Deserializing model using pickle is disallowed"
    )
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_after_a_real_pipeline_run_pngs_get_the_labels_in_predictions_csv(
    run_stages, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real stages on synthetic data; both the checkpoint and the registry's champion must agree
    with evaluate."""
    import pandas as pd

    from pipeline.paths import PREDICTIONS_FILE, RAW_DIR

    run_stages("download", "stats", "split", "train", "evaluate", "promote")
    table = pd.read_csv(PREDICTIONS_FILE).head(10)
    images = read_idx(RAW_DIR / TEST_IMAGES)
    paths = []
    for i in table["index"]:
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    for model in ("models/model.pt", "models:/mnist-mlp@champion"):
        code, lines, err = run_cli([*map(str, paths), "--model", model, "--json"], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in lines]
        assert [row["label"] for row in rows] == table["predicted"].tolist(), model
        assert [row["confidence"] for row in rows] == pytest.approx(
            table["confidence"].tolist(), abs=2e-6
        ), model
