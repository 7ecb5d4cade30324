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

A run longer than a sitting (`make committee`: hours on 2 cores) can go on after an interruption,
even a lost machine: while the command runs, results/unfinished/NAME.json keeps what it has cost
so far, rewritten every HEARTBEAT seconds. `--continue` runs the continuing command (for DVC,
`dvc repro` of the same stages) as a further sitting of the same run, at the same commit, and the
result sums the sittings' wall-clock and CPU seconds and lists each with its machine.

    python scripts/record_result.py --continue NAME METRICS_JSON -- COMMAND...
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
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import atomic, numerics

RESULTS_DIR = Path("results")
UNFINISHED_DIR = RESULTS_DIR / "unfinished"  # git ignores it
HEARTBEAT = 30.0  # seconds between two updates of the unfinished record


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


def process_tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and its live descendants so far, with the children each has waited
    for: what getrusage gives only once the command has exited."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or one that just ended
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(map(int, fields[11:15]))  # utime stime cutime cstime

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    return sum(ticks[pid] for pid in ticks if descends(pid)) / tick


def run_to_the_end(command: list[str], on_heartbeat: Any) -> int:
    """`command`'s exit status, as a shell reports it, calling on_heartbeat(pid) every HEARTBEAT
    seconds while it runs. Ctrl-C goes to the whole process group, so the command gets it;
    subprocess.run would SIGKILL it 0.25 s later, before DVC can save its state, so the interrupt
    is ignored here until the command has exited."""
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the fork: the child keeps it
    finished = threading.Event()

    def beat() -> None:
        while not finished.wait(HEARTBEAT):
            on_heartbeat(process.pid)

    threading.Thread(target=beat, daemon=True).start()
    try:
        status = process.wait()
    finally:
        finished.set()
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


def unfinished_run(name: str, commit: str) -> tuple[str, list[dict[str, Any]]]:
    """The commit an unfinished run of `name` started at and its sittings so far, if that commit
    is `commit`'s HEAD; SystemExit naming the fix otherwise. Only HEAD must match: the interrupted
    command leaves the tree changed (`dvc exp run` writes its params into params.yaml), and the
    continuing command picks up from that tree."""
    path = UNFINISHED_DIR / f"{name}.json"
    try:
        unfinished = json.loads(path.read_text())
        ran_at, sittings = str(unfinished["git_commit"]), list(unfinished["sittings"])
    except FileNotFoundError:
        raise SystemExit(
            f"error: {path} is missing, so there is no unfinished run of {name} to continue; "
            "start it again without --continue"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"error: cannot read {path} ({exc}); start again without --continue"
        ) from None
    if ran_at.removesuffix("-dirty") != commit.removesuffix("-dirty"):
        raise SystemExit(
            f"error: the unfinished run of {name} ran at commit {ran_at}, not "
            f"{commit}; check that commit out to continue it, or start again without --continue"
        )
    return ran_at, sittings


def record(name: str, metrics_file: Path, command: list[str], continues: bool = False) -> int:
    commit = git_commit()  # before the run: DVC experiments leave HEAD where it was
    earlier: list[dict[str, Any]] = []
    if continues:
        commit, earlier = unfinished_run(name, commit)
    unfinished = UNFINISHED_DIR / f"{name}.json"
    cpu_before, started = children_cpu_seconds(), time.monotonic()
    sitting = {
        "command": shlex.join(command),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }

    def sittings_so_far(wall: float, cpu: float) -> list[dict[str, Any]]:
        return [*earlier, {**sitting, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}]

    def keep_unfinished(wall: float, cpu: float) -> None:
        sittings = sittings_so_far(wall, cpu)
        atomic.write_json(unfinished, {"preset": name, "git_commit": commit, "sittings": sittings})

    def heartbeat(pid: int) -> None:
        keep_unfinished(time.monotonic() - started, process_tree_cpu_seconds(pid))

    try:
        status = run_to_the_end(command, heartbeat)
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
        keep_unfinished(wall, cpu)
        print(
            f"error: {shlex.join(command)} exited with {status}; nothing recorded ({unfinished} "
            "keeps its cost so far, for a run that can go on: rerun with --continue)",
            file=sys.stderr,
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
    sittings = sittings_so_far(wall, cpu)
    result = {
        "preset": name,
        "test_accuracy": accuracy,
        "test_errors": errors,
        "valid_accuracy": metrics.get("valid_accuracy"),
        "members": {k: v for k, v in metrics.items() if k.startswith("member_")},
        "git_commit": commit,
        "command": sittings[0]["command"],
        "wall_seconds": round(sum(s["wall_seconds"] for s in sittings), 1),
        "cpu_seconds": round(sum(s["cpu_seconds"] for s in sittings), 1),
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if len(sittings) > 1:  # the sums above, sitting by sitting
        result["sittings"] = sittings
    path = RESULTS_DIR / f"{name}.json"
    atomic.write_json(path, result)
    unfinished.unlink(missing_ok=True)
    wall_total = result["wall_seconds"]
    print(f"{path}: test accuracy {accuracy:.4f} ({errors} errors), {wall_total:.0f} s wall")
    return 0


def main(argv: list[str]) -> int:
    continues = argv[:1] == ["--continue"]
    argv = argv[1:] if continues else argv
    if len(argv) < 4 or argv[2] != "--":
        print(
            f"usage: {Path(__file__).name} [--continue] NAME METRICS_JSON -- COMMAND...",
            file=sys.stderr,
        )
        return 2
    return record(argv[0], Path(argv[1]), argv[3:], continues)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
