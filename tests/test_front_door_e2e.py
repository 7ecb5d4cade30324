"""The front door end to end (slow): the champion served over REST by MLflow's scoring server,
and the MLflow UI as a user's browser renders it after a real `dvc repro`."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.data.datasets import TEST_IMAGES
from pipeline.data.loading import resize
from pipeline.paths import RAW_DIR
from pipeline.serving.predict import read_input
from tests.helpers import background_server, free_port, mlflow_service, serve_command

# Debian's chromium (.ci/run installs it); $CHROMIUM names another Chromium-based browser.
CHROMIUM = os.environ.get("CHROMIUM", "chromium")


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_served_champion_labels_200_test_images_as_predict_does(
    run_stages, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_stages("download", "stats", "split", "train", "evaluate", "promote")
    # The body as docs/serving.md builds it: predict's reading of the file, then [0, 1] pixels.
    _, images = read_input(str(RAW_DIR / TEST_IMAGES))
    assert len(images) == 200
    pixels = resize(torch.from_numpy(images), 28).float().div(255).flatten(1).tolist()
    capfd.readouterr()
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            str(RAW_DIR / TEST_IMAGES),
            "--model",
            "models:/mnist-mlp@champion",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    expected = [json.loads(line) for line in predicted]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command("models:/mnist-mlp@champion", port)
    with background_server(
        command, f"{url}/ping", tmp_path / "serve.log", env=dict(os.environ)
    ) as server:
        status, answer = post(f"{url}/invocations", json.dumps({"inputs": pixels}).encode())
        assert status == 200, answer
        served = answer["predictions"]
        assert [a["digit"] for a in served] == [p["label"] for p in expected]
        assert [a["ood"] for a in served] == [p["ood"] for p in expected]
        assert [a["probability"] for a in served] == pytest.approx(
            [p["confidence"] for p in expected], abs=1e-5
        )
        assert len({p["label"] for p in expected}) > 1  # the labels do depend on the image

        # The README's curl: a PNG file, base64 in the JSON body.
        Image.fromarray(images[0]).save(tmp_path / "digit.png")
        encoded = base64.b64encode((tmp_path / "digit.png").read_bytes()).decode()
        (tmp_path / "body.json").write_text(json.dumps({"inputs": [encoded]}))
        curl = subprocess.run(
            [
                "curl",
                "-s",
                "-H",
                "Content-Type: application/json",
                "--data",
                "@body.json",
                f"{url}/invocations",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=True,
        )
        (picture,) = json.loads(curl.stdout)["predictions"]
        assert picture["digit"] == expected[0]["label"] and picture["ood"] is False
        assert picture["probability"] == pytest.approx(expected[0]["confidence"], abs=1e-5)

        zero_to_255 = json.dumps({"inputs": [[v * 255 for v in pixels[0]]]}).encode()
        for body in (
            b"{not json",
            json.dumps({"inputs": [[0.5, 0.5]]}).encode(),
            b'{"rows": []}',
            zero_to_255,
        ):
            status, answer = post(f"{url}/invocations", body)
            assert status == 400, (body[:50], status, answer)
            assert answer["message"], body[:50]
        assert answer["message"].splitlines()[-1].endswith("divide 0-255 values by 255")
        assert server.poll() is None  # still serving after the bad requests
        status, answer = post(f"{url}/invocations", json.dumps({"inputs": pixels[:3]}).encode())
        assert status == 200
        assert [a["digit"] for a in answer["predictions"]] == [p["label"] for p in expected[:3]]


def dump_dom(url: str, budget_ms: int = 20000) -> str:
    """The page as headless Chromium renders it, after the UI's own requests have settled."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


@pytest.mark.slow
def test_mlflow_ui_in_a_real_browser_shows_names_datasets_metrics_and_champion(
    dvc_project: Path, tmp_path: Path
) -> None:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{CHROMIUM} is not installed; .ci/run installs Debian's chromium with apt-get"
            )
        pytest.skip(
            f"{CHROMIUM} is not installed (apt-get install chromium); under CI=true this fails"
        )
    import mlflow

    def dvc(*args: str) -> None:
        subprocess.run(["dvc", *args], check=True, capture_output=True, timeout=900)

    # A committed dvc.lock that the full repro then rewrites after each stage: train still has to
    # see a clean commit.
    dvc("repro", "download")
    subprocess.run(["git", "add", "-A"], check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "download"], check=True, capture_output=True)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dvc("repro")
    assert subprocess.run(
        ["git", "status", "--porcelain", "dvc.lock"], capture_output=True, text=True
    ).stdout

    client = mlflow.MlflowClient(f"sqlite:///{dvc_project / 'mlflow.db'}")
    run_id = json.loads(Path("models/mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == f"repro-{sha}"
    experiment = run.info.experiment_id

    store = f"sqlite:///{dvc_project / 'mlflow.db'}"
    with mlflow_service("ui", store, tmp_path / "ui.log") as url:
        runs = dump_dom(f"{url}/#/experiments/{experiment}/runs")
        assert f"repro-{sha}" in runs
        for name in ("custom-train", "custom-valid", "custom-test"):
            assert name in runs, name
        page = dump_dom(f"{url}/#/experiments/{experiment}/runs/{run_id}")
        assert "test_accuracy" in page
        # The alias tag renders as "@&nbsp;champion"; on the run page "champion" is also in the
        # promotion.reason tag's text, which is why the registered model's page is the one checked.
        model = dump_dom(f"{url}/#/models/mnist-mlp")
        assert re.search(r"@(&nbsp;|\s)*champion<", model), (
            "no champion alias on the registered model's page"
        )
        assert "promotion.reason" not in model and "Input contract" in model
