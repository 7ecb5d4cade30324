"""Running the README's challenger (16x16 inputs) after the reference never breaks a client of
models:/mnist-mlp@champion: each input size has its own registered model (tracking.registered_name),
and the gate refuses a contract change under one name (tests/test_promote.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import parse_params
from tests.helpers import TINY_PIPELINE, free_port, serve_command

pytestmark = pytest.mark.slow

CHALLENGER = {
    "data": {"image_size": 16},
    "model": {"activation": "sigmoid", "output_activation": "sigmoid"},
    "train": {"loss": "mse", "lr": 0.003},
    "augment": {"crop_padding": 1},
}


def merged(base: dict, extra: dict) -> dict:
    return {
        section: {**base.get(section, {}), **extra.get(section, {})}
        for section in base.keys() | extra.keys()
    }


def answer(uri: str, pixels: int) -> tuple[int, str]:
    """Serve `uri` with `mlflow models serve` as a client would reach it; POST one image of
    `pixels` values."""
    port = free_port()
    server = subprocess.Popen(
        serve_command(uri, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"},
    )
    try:
        body = json.dumps({"inputs": np.full((1, pixels), 0.5, np.float32).tolist()}).encode()
        deadline = time.monotonic() + 180
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not start"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_challenger_after_the_reference_leaves_the_champion_endpoint_working(
    run_stages,
) -> None:
    import importlib

    run_stages("download", "stats", "split", "train", "evaluate", "promote")
    status, text = answer("models:/mnist-mlp@champion", 784)
    assert status == 200 and len(json.loads(text)["predictions"][0]["probabilities"]) == 10

    challenger = parse_params(merged(TINY_PIPELINE, CHALLENGER))
    for stage in ("stats", "train", "evaluate", "promote"):
        importlib.import_module(f"pipeline.stages.{stage}").main(challenger)
    record = json.loads(Path("reports/promotion.json").read_text())
    assert (record["registered_model"], record["decision"]) == ("mnist-mlp-16x16", "promoted")
    status, text = answer(
        "models:/mnist-mlp@champion", 784
    )  # the same client, after the challenger
    assert status == 200 and len(json.loads(text)["predictions"][0]["probabilities"]) == 10
    # 16x16 clients have their own endpoint, served the same way: labelled answers, rows checked
    status, text = answer("models:/mnist-mlp-16x16@champion", 256)
    (labelled,) = json.loads(text)["predictions"]
    assert status == 200 and {"digit", "probability", "ood"} <= set(labelled)
    status, text = answer("models:/mnist-mlp-16x16@champion", 784)
    assert status == 400 and "784 values, not 256; send each 16x16 image" in text
