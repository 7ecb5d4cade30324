"""The champion as a service (pipeline/serving/service.py, pipeline/serving/served_model.py):
labelled answers to pixel rows and pictures, the same as predict's, and a 400 naming the rows and
the fix for every kind of bad request, checked in process and through the real `mlflow models
serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.serving.ood import OodReference, fit_reference
from pipeline.serving.service import (
    MAX_ROWS,
    Answerer,
    RequestError,
    ServingGraph,
    export_graph,
    fit_references,
    load_graph,
)
from tests.helpers import background_server, free_port, serve_command, synthetic_digits, train_tiny


@pytest.fixture(scope="module")
def reference() -> OodReference:
    train, _ = synthetic_digits(600, seed=0)
    valid, _ = synthetic_digits(200, seed=1)
    return fit_reference(torch.from_numpy(train), torch.from_numpy(valid))


@pytest.fixture(scope="module")
def answerer(reference: OodReference) -> Answerer:
    return Answerer(ServingGraph(train_tiny(28), "cross_entropy"), 28, reference)


def digit_rows(n: int, seed: int = 5) -> np.ndarray:
    images, _ = synthetic_digits(n, seed)
    return images.reshape(n, -1).astype(np.float32) / 255


def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def refusal(answerer: Answerer, inputs: Any) -> str:
    with pytest.raises(RequestError) as caught:
        answerer.request_rows(inputs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_answers_are_labelled_and_agree_with_the_model(answerer: Answerer) -> None:
    rows = digit_rows(20)
    answers = answerer.answer(answerer.request_rows(rows.tolist()))
    scores = answerer.graph.model(torch.from_numpy(rows))
    assert [a["digit"] for a in answers] == scores.argmax(1).tolist()
    for answer, expected in zip(answers, torch.softmax(scores, 1).tolist(), strict=True):
        assert answer["probabilities"] == pytest.approx(expected, abs=1e-6)
        assert answer["probability"] == max(answer["probabilities"])
        assert set(answer) == {"digit", "probability", "probabilities", "ood", "ood_reason"}
    noise = np.random.default_rng(0).random((1, 784)).tolist()
    flagged = answerer.answer(answerer.request_rows(noise), features=True)[0]
    assert flagged["ood"] is True and "standard deviations" in flagged["ood_reason"]
    assert len(flagged["features"]) == 32  # the tiny MLP's last hidden layer


def test_pictures_and_pixel_rows_mix_in_one_request(answerer: Answerer) -> None:
    images, _ = synthetic_digits(3, seed=9)
    mixed = [png(images[0]), (images[1].reshape(-1) / 255).tolist(), png(255 - images[2], "RGB")]
    rows = answerer.request_rows(mixed)
    expected = torch.from_numpy(images.reshape(3, -1).astype(np.float32) / 255)
    assert torch.allclose(rows, expected, atol=1e-6)  # 28x28 pictures are taken as framed


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([], "the request holds no rows"),
        ({"pixels": [0.0] * 784}, "the request holds no rows"),
        ([[0.5] * 783, [0.5] * 783], "rows 0, 1: 783 values, not 784; send each 28x28 image"),
        ([[0.5] * 784, [0.5] * 10], "row 1: 10 values, not 784"),
        ([[[0.5] * 28] * 28], "row 0: 28x28 values, not 784; send each 28x28 image as one flat"),
        ([[0.5] * 784, [float("nan")] + [0.5] * 783], "row 1: NaN or infinity"),
        ([[float("inf")] * 784], "row 0: NaN or infinity"),
        (
            [[0.5] * 784, [255.0] * 784],
            "row 1: pixels outside [0, 1] (from 255 to 255); divide 0-255 values by 255",
        ),
        ([[-0.5] * 784], "row 0: pixels outside [0, 1] (from -0.5 to -0.5); send values in [0, 1]"),
        ([["a"] * 784], "row 0: something other than numbers"),
        (["not base64!"], "row 0: not valid base64; send the picture file's bytes base64-encoded"),
        (
            [base64.b64encode(b"plain text, not a picture").decode()],
            "row 0: not a picture Pillow can read",
        ),
        ([png(np.zeros((40, 40), np.uint8))], "row 0: no digit found"),
        ([[0.5] * 784] * (MAX_ROWS + 1), f"more than the limit of {MAX_ROWS}; split it"),
    ],
    ids=[
        "empty",
        "not-a-list",
        "short",
        "ragged",
        "2-d",
        "nan",
        "inf",
        "0-255",
        "negative",
        "text",
        "bad-base64",
        "not-an-image",
        "blank-picture",
        "too-many",
    ],
)
def test_each_bad_request_is_refused_naming_rows_and_fix(
    answerer: Answerer, inputs: Any, expected: str
) -> None:
    assert expected in refusal(answerer, inputs)


def packed(rows: np.ndarray, kind: str) -> list[str]:
    """Rows as a client packs them: base64 of each row's pixels as uint8 or float32."""
    values = (rows * 255).round().astype(np.uint8) if kind == "uint8" else rows.astype("<f4")
    return [base64.b64encode(row.tobytes()).decode() for row in values]


@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_packed_rows_are_read_as_the_same_pixels(answerer: Answerer, kind: str) -> None:
    rows = digit_rows(6)  # k/255 values: uint8 carries them exactly
    got = answerer.request_rows(packed(rows, kind), kind)
    assert torch.equal(got, answerer.request_rows(rows.tolist()))
    assert answerer.answer(got) == answerer.answer(answerer.request_rows(rows.tolist()))


@pytest.mark.parametrize(
    ("inputs", "kind", "expected"),
    [
        ([[0.5] * 784], "uint8", "row 0: not a base64 string; with packed rows send each image's"),
        (["%%%"], "uint8", "row 0: not valid base64; send each image's 784 pixels as uint8"),
        ([base64.b64encode(bytes(783)).decode()], "uint8", "row 0: 783 bytes, not 784; send"),
        ([base64.b64encode(bytes(784)).decode()], "float32", "row 0: 784 bytes, not 3136"),
        (
            [base64.b64encode(np.full(784, 255, "<f4").tobytes()).decode()],
            "float32",
            "row 0: pixels outside [0, 1] (from 255 to 255); divide 0-255 values by 255",
        ),
        (
            [base64.b64encode(np.full(784, np.nan, "<f4").tobytes()).decode()],
            "float32",
            "row 0: NaN or infinity",
        ),
        ([base64.b64encode(bytes(784)).decode()], "uint16", 'params "packed" is "uint16"; send'),
    ],
    ids=["a-list", "bad-base64", "short", "uint8-as-float32", "0-255", "nan", "unknown-type"],
)
def test_bad_packed_rows_are_refused_naming_rows_and_fix(
    answerer: Answerer, inputs: Any, kind: str, expected: str
) -> None:
    with pytest.raises(RequestError) as caught:
        answerer.request_rows(inputs, kind)
    assert expected in str(caught.value)


def test_every_bad_row_is_named_at_once(answerer: Answerer) -> None:
    rows = [[0.5] * 784] * 30
    rows[3] = rows[17] = [2.0] * 784
    rows[5] = "%%%"
    message = refusal(answerer, rows)
    assert message.startswith("refused 3 of 30 rows: row 5: not valid base64")
    assert "rows 3, 17: pixels outside [0, 1]" in message
    many = [[255.0] * 784] * 12
    assert "rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more:" in refusal(answerer, many)


def test_the_exported_graph_loads_pickle_free_and_answers_as_the_module(
    answerer: Answerer, tmp_path: Path
) -> None:
    export_graph(answerer.graph.model, "cross_entropy", 28, tmp_path / "graph.pt2")
    loaded = Answerer(load_graph(tmp_path / "graph.pt2"), 28, answerer.reference)
    rows = answerer.request_rows(digit_rows(7).tolist())
    for got, expected in zip(loaded.answer(rows, True), answerer.answer(rows, True), strict=True):
        assert got["digit"] == expected["digit"] and got["ood"] == expected["ood"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        assert got["features"] == pytest.approx(expected["features"], abs=1e-5)
    one = answerer.request_rows(digit_rows(1).tolist())  # the batch size stays free
    assert loaded.answer(one)[0]["digit"] == answerer.answer(one)[0]["digit"]
    # called as its ops, without ExportedProgram.module()'s guards: the same bytes
    wrapped = torch.export.load(str(tmp_path / "graph.pt2")).module()
    with torch.no_grad():
        for batch in (one, rows):
            for got, expected in zip(loaded.graph(batch), wrapped(batch), strict=True):
                assert torch.equal(got, expected)


# ---- through the real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path, reference: OodReference
) -> Iterator[tuple[str, Path]]:
    """A tiny model logged and registered as train does it, served by `mlflow models serve` with
    pickles refused; yields the invocations URL and the checkpoint, with the reference beside it."""
    import shutil

    import mlflow

    from pipeline.artifacts import write_ood_reference
    from pipeline.learner.model import save_checkpoint
    from pipeline.registry import tracking
    from pipeline.serving import registration

    folder = tmp_path_factory.mktemp("served")
    shutil.copy(migrated_mlflow_db, folder / "mlflow.db")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    model = train_tiny(28)
    checkpoint = folder / "model.pt"
    save_checkpoint(checkpoint, model, {"loss": "cross_entropy", "epoch": 1})
    write_ood_reference(reference.to_dict(), folder / "ood_reference.json")
    train, _ = synthetic_digits(600, seed=0)  # as the reference fixture's, so the same reference
    valid, _ = synthetic_digits(200, seed=1)
    references = fit_references(
        model, "cross_entropy", torch.from_numpy(train), torch.from_numpy(valid)
    )
    assert references.ood == reference
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        tracking.configure()
        mlflow.set_experiment("service")
        with mlflow.start_run():
            info = registration.log_model(model, "cross_entropy", references, "mnist-mlp")
        mlflow.MlflowClient().set_registered_model_alias(
            "mnist-mlp", "champion", str(info.registered_model_version)
        )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "MNIST_RECORDS": str(folder / "records"),  # the module's server records here
    }
    with background_server(
        serve_command("models:/mnist-mlp@champion", port),
        f"http://127.0.0.1:{port}/ping",
        folder / "serve.log",
        env,
    ):
        yield f"http://127.0.0.1:{port}/invocations", checkpoint


def post(url: str, body: Any) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def picture_files(folder: Path) -> list[Path]:
    """The kinds of picture the predict tests make: digits cut from the test set (plain, RGB,
    ink on paper), a photo-like JPEG, a 16-bit PNG, a transparent PNG, and noise."""
    images, _ = synthetic_digits(9, seed=11)
    files = []
    for i, image in enumerate(images[:6]):
        variant = [Image.fromarray(image), Image.fromarray(image).convert("RGB")][i % 2]
        files.append(folder / f"digit{i}.png")
        (Image.fromarray(255 - image) if i == 5 else variant).save(files[-1])
    photo = np.full((140, 90), 200, np.uint8)
    photo[30:110, 40:52] = 40  # a dark stroke on grey paper: a one
    photo[30:40, 30:45] = 40
    Image.fromarray(photo).save(folder / "photo.jpg", quality=85)
    sixteen = np.zeros((40, 40), dtype=np.uint16)
    sixteen[5:35, 15:25] = 65535
    Image.fromarray(sixteen).save(folder / "deep.png")
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[5:35, 15:25] = (0, 0, 0, 255)
    Image.fromarray(rgba).save(folder / "ink.png")
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return [
        *files,
        folder / "photo.jpg",
        folder / "deep.png",
        folder / "ink.png",
        folder / "noise.png",
    ]


@pytest.mark.slow
def test_the_same_pictures_get_the_same_answers_from_predict_and_the_service(
    served: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.__main__ import main as pipeline_main

    url, checkpoint = served
    files = picture_files(tmp_path)
    body = {"inputs": [base64.b64encode(path.read_bytes()).decode() for path in files]}
    status, answer = post(url, body)
    assert status == 200, answer
    service = answer["predictions"]
    code = pipeline_main(["predict", *map(str, files), "--model", str(checkpoint), "--json"])
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(local) == len(service) == len(files)
    assert [a["digit"] for a in service] == [p["label"] for p in local]
    assert [a["ood"] for a in service] == [p["ood"] for p in local]
    assert service[-1]["ood"] is True and local[-1]["ood_reason"] == service[-1]["ood_reason"]
    # the served graph is torch.export's, predict runs the module: float32 rounding apart
    assert [a["probability"] for a in service] == pytest.approx(
        [p["confidence"] for p in local], abs=1e-5
    )
    assert all(sum(a["probabilities"]) == pytest.approx(1, abs=1e-5) for a in service)


@pytest.mark.slow
def test_pixel_rows_and_features_through_the_service(served: tuple[str, Path]) -> None:
    url, checkpoint = served
    rows = digit_rows(5).tolist()
    status, answer = post(url, {"inputs": rows})
    assert status == 200 and len(answer["predictions"]) == 5
    assert "features" not in answer["predictions"][0]
    status, answer = post(url, {"inputs": rows[:2], "params": {"features": True}})
    assert status == 200 and len(answer["predictions"][1]["features"]) == 32
    # the server recorded what it answered, under the logged model's id
    import pyarrow.dataset as ds

    recorded = (
        ds.dataset(checkpoint.with_name("records"), format="parquet", partitioning="hive")
        .to_table()
        .to_pydict()
    )
    assert set(recorded["source"]) == {"service"} and recorded["model"][0].startswith("m-")
    assert answer["predictions"][1]["features"] in recorded["features"]


@pytest.mark.slow
def test_packed_rows_through_the_service_answer_as_pixel_values(served: tuple[str, Path]) -> None:
    url, _ = served
    rows = digit_rows(4)
    status, plain = post(url, {"inputs": rows.tolist()})
    assert status == 200
    for kind in ("uint8", "float32"):
        status, answer = post(url, {"inputs": packed(rows, kind), "params": {"packed": kind}})
        assert status == 200 and answer == plain, answer


@pytest.mark.slow
def test_the_serving_pages_packed_example_runs_as_written(served: tuple[str, Path]) -> None:
    import re
    import subprocess
    import sys

    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    section = page.split("### Many images at once: packed rows", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]  # type: ignore[index]
    code = code.replace("http://127.0.0.1:5001/invocations", served[0])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\[\d, \d\]\n", done.stdout), done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "last_line_ends"),
    [
        (
            {"inputs": [[0.5] * 700]},
            "send each 28x28 image as one flat row of 784 values, row by row",
        ),
        ({"inputs": [[0.5] * 784, [0.5] * 3]}, "row 1: 3 values, not 784"),
        (
            b'{"inputs": [[NaN, 0.5]]}',
            "send each 28x28 image as one flat row of 784 values, row by row",
        ),
        (("nan", 1), "row 1: NaN or infinity; send finite pixel values in [0, 1]"),
        (("255", 0), "divide 0-255 values by 255"),
        (
            {"inputs": ["%%%"]},
            "row 0: not valid base64; send the picture file's bytes base64-encoded",
        ),
        ({"inputs": [base64.b64encode(b"%PDF-1.4").decode()]}, "use a PNG or JPEG of one digit"),
        ({"inputs": []}, "or a base64 PNG or JPEG"),
        (
            {"inputs": ["AAAA"], "params": {"packed": "uint8"}},
            "row 0: 3 bytes, not 784; send each image's 784 pixels as uint8, row by row, "
            "base64-encoded",
        ),
        ({"inputs": [[0.0] * 784] * (MAX_ROWS + 1)}, f"requests of at most {MAX_ROWS} rows"),
    ],
    ids=[
        "length",
        "ragged",
        "nan-literal",
        "nan",
        "0-255",
        "bad-base64",
        "not-an-image",
        "empty",
        "packed-short",
        "too-many",
    ],
)
def test_bad_requests_get_400_whose_last_line_names_the_rows_and_fix(
    served: tuple[str, Path], body: Any, last_line_ends: str
) -> None:
    url, _ = served
    if isinstance(body, tuple):  # a valid row 0, then row 1 (or row 0) spoilt as named
        kind, row = body
        rows = digit_rows(2).tolist()
        rows[row] = [float("nan")] * 784 if kind == "nan" else [v * 255 for v in rows[row]]
        body = json.dumps({"inputs": rows}).encode()  # json writes NaN, as many clients do
    status, answer = post(url, body)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    last = answer["message"].splitlines()[-1]  # MLflow puts the request before it
    assert last.startswith(("Error: refused", "Error: the request")), last
    assert last_line_ends in last
