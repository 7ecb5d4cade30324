"""scripts/check_reproduction.py: CI's stale-lock and exact-reproduction gates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import numerics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_reproduction.py"
FILES = {
    "models/model.pt": b"weights",
    "reports/metrics.json": b'{"test_accuracy": 0.99}\n',
    "reports/predictions.csv": b"actual,predicted\n7,7\n",
}


def gate(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=repo, env=env, capture_output=True, text=True
    )


def committed_result(repo: Path, covered: list[str]) -> None:
    """A repository whose HEAD:dvc.lock records FILES, and the CPU types it reproduced on."""
    md5 = {path: hashlib.md5(data).hexdigest() for path, data in FILES.items()}
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {"outs": [{"path": "models/model.pt", "md5": md5["models/model.pt"]}]},
            "evaluate": {
                "outs": [{"path": p, "md5": md5[p]} for p in list(FILES)[1:]],
            },
        },
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    (repo / "results").mkdir()
    (repo / "results/reproduction.json").write_text(json.dumps({"cpu_types": covered}))
    for path, data in FILES.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "result"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True
        )


def test_the_committed_bytes_pass(tmp_path):
    committed_result(tmp_path, [numerics.cpu_type()])
    done = gate(tmp_path, "result")
    assert done.returncode == 0 and "reproduced bit for bit" in done.stdout, done.stdout


def test_other_bytes_fail_on_a_covered_cpu_type(tmp_path):
    committed_result(tmp_path, [numerics.cpu_type()])
    (tmp_path / "reports/predictions.csv").write_bytes(b"actual,predicted\n7,1\n")
    done = gate(tmp_path, "result")
    assert done.returncode == 1
    assert "differs from the committed dvc.lock in: reports/predictions.csv" in done.stdout


def test_other_bytes_on_a_new_cpu_type_are_reported_by_name_and_pass(tmp_path):
    committed_result(tmp_path, ["Some Other CPU 6/85 AVX-512 AMX"])
    (tmp_path / "models/model.pt").write_bytes(b"other weights")
    done = gate(tmp_path, "result")
    assert done.returncode == 0
    assert f"warning: {numerics.cpu_type()} is not among the CPU types" in done.stdout


def test_stale_dependencies_are_code_params_and_pins_only():
    from importlib import util

    spec = util.spec_from_file_location("check_reproduction", SCRIPT)
    assert spec and spec.loader
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = {
        "train": [
            {
                "changed deps": {
                    "pipeline/stages/train.py": "modified",
                    "data/raw": "deleted",  # not in git: a fresh clone has no data yet
                    "params.yaml": {"train.lr": "modified"},
                }
            },
            {"changed outs": {"models/model.pt": "not in cache"}},
        ],
        "download": ["always changed"],
    }
    assert module.stale_dependencies(status, {"pipeline/stages/train.py"}) == [
        "train: pipeline/stages/train.py (modified)",
        "train: param train.lr (modified)",
    ]
