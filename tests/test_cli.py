"""`python -m pipeline <command>` as a user runs it: one `error:` line and exit 1 for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.data.datasets import FILES


def cli(*args: str, mirror: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MNIST_MIRROR"}
    if mirror is not None:
        env["MNIST_MIRROR"] = str(mirror)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_params_file_prints_one_error_line_and_exits_1(workdir):
    Path("bad.yaml").write_text("train:\n  lr: -1\n  epochz: 3\n")
    result = cli("download", "--params", "bad.yaml")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: invalid params: train.lr must be greater than 0, got -1; "
        "train.epochz is not a known key (allowed: optimizer, lr, "
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not Path("data").exists()  # failed before any work


def test_download_through_the_cli(workdir, synthetic_mirror):
    md5 = {f: hashlib.md5((synthetic_mirror / f).read_bytes()).hexdigest() for f in FILES}
    Path("params.yaml").write_text(
        json.dumps({"data": {"name": "custom", "md5": md5}})
    )  # JSON is YAML
    result = cli("download", mirror=synthetic_mirror)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(Path("data/raw/checksums.json").read_text())
    assert {f: e["md5"] for f, e in recorded["files"].items()} == md5
    result = cli("download", mirror=synthetic_mirror / "gone")
    assert result.returncode == 0  # everything already verified: no source needed
    assert result.stderr.count("already present and verified") == 4


def test_predict_takes_params_before_the_subcommand_like_every_stage(workdir):
    """`--params` before `predict` once gave a usage error; predict ignores it but accepts it."""
    import torch
    from PIL import Image

    from pipeline.learner.model import MLP, Architecture, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(
        Path("model.pt"),
        MLP(Architecture(28, (8,)), 0.1, 0.3),
        {"loss": "cross_entropy", "epoch": 1},
    )
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[6:22, 12:16] = 255  # a "1"
    Image.fromarray(picture).save("x.png")
    result = cli("--params", "params.yaml", "predict", "x.png", "--model", "model.pt")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"x\.png: \d \(confidence \d\.\d{4}\)\n", result.stdout)


def test_predict_without_a_path_is_a_usage_error_not_a_crash(workdir):
    for args in (("predict",), ("--params", "params.yaml", "predict")):
        result = cli(*args)
        assert result.returncode == 2, args
        assert "the following arguments are required: PATH" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
