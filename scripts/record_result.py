"""Run a preset's command and record its result in results/NAME.json, the source of the numbers
the Results table quotes (docs/results.md).

    python scripts/record_result.py NAME METRICS_JSON -- COMMAND...

e.g. `make best` runs `python scripts/record_result.py best reports/metrics.json -- dvc exp run
...`. It records the test accuracy and errors from METRICS_JSON (what the command's evaluate
stage wrote), the git commit, the command, its wall-clock and CPU seconds (the command and every
process it waited for: DVC, the stages, their threads), and the machine (CPU model and flags,
cores, OS, and the torch, numpy and MKL versions). A failed command, or one that leaves no
metrics, writes nothing and passes its exit status on as the shell would (128 + N for signal N;
127 not found, 126 not executable). Ctrl-C reaches the command, which is waited for, so that an
interrupted `dvc exp run` can stop cleanly and resume.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline import atomic, numerics

RESULTS_DIR = Path("results")


def git_commit() -> str:
    """HEAD, with -dirty when tracked files differ from it (the command ran on uncommitted code)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict[str, Any]:
    """The CPU (model, flags, the type the reproduction gate compares by) and the kernel libraries'
    versions; `numerics.portable` is in params.yaml, so in the command's params."""
    environment = numerics.environment()
    return {
        "cpu": environment.pop("cpu_model"),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        **environment,
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_to_the_end(command: list[str]) -> int:
    """`command`'s exit status, as a shell reports it. Ctrl-C goes to the whole process group, so
    the command gets it; subprocess.run would SIGKILL it 0.25 s later, before DVC can save its
    state, so the interrupt is ignored here until the command has exited."""
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the fork: the child keeps it
    try:
        status = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


def record(name: str, metrics_file: Path, command: list[str]) -> int:
    commit = git_commit()  # before the run: DVC experiments leave HEAD where it was
    cpu_before, started = children_cpu_seconds(), time.monotonic()
    try:
        status = run_to_the_end(command)
    except FileNotFoundError:
        print(
            f"error: {command[0]} not found; check the command after -- and PATH", file=sys.stderr
        )
        return 127
    except OSError as exc:
        print(
            f"error: cannot run {command[0]} ({exc.strerror}); check that it is an executable",
            file=sys.stderr,
        )
        return 126
    wall, cpu = time.monotonic() - started, children_cpu_seconds() - cpu_before
    if status != 0:
        print(
            f"error: {shlex.join(command)} exited with {status}; nothing recorded", file=sys.stderr
        )
        return status
    try:
        metrics = json.loads(metrics_file.read_text())
        accuracy, errors = float(metrics["test_accuracy"]), int(metrics["test_errors"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(
            f"error: {metrics_file} holds no test_accuracy and test_errors ({exc}); check that "
            "the command ends with an evaluate stage",
            file=sys.stderr,
        )
        return 1
    result = {
        "preset": name,
        "test_accuracy": accuracy,
        "test_errors": errors,
        "valid_accuracy": metrics.get("valid_accuracy"),
        "members": {k: v for k, v in metrics.items() if k.startswith("member_")},
        "git_commit": commit,
        "command": shlex.join(command),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = RESULTS_DIR / f"{name}.json"
    atomic.write_json(path, result)
    print(f"{path}: test accuracy {accuracy:.4f} ({errors} errors), {wall:.0f} s wall")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(f"usage: {Path(__file__).name} NAME METRICS_JSON -- COMMAND...", file=sys.stderr)
        return 2
    return record(argv[0], Path(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
