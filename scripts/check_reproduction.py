"""CI's two reproduction gates (.ci/run), against what the commit says of itself.

    python scripts/check_reproduction.py lock     # before any run: dvc.lock is current
    python scripts/check_reproduction.py result   # after dvc repro: the committed bytes again

`lock` fails when `dvc status` finds a changed git-tracked dependency or param of any stage of
dvc.yaml: the committed results were then not made by the committed code. Data dependencies
are not in git (a fresh clone has none yet), so only code, params, pins and upstream.json count.

`result` compares the md5 of models/model.pt, reports/metrics.json and reports/predictions.csv
with the committed dvc.lock (`git show HEAD:dvc.lock`, since the run rewrote the file). On a CPU
type listed in results/reproduction.json a difference fails, printing the metrics diff; on any
other type it is reported with that type's name, and the gate passes, so a CPU that cannot be
made identical does not stop main from landing (docs/training.md lists such types).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import numerics

COMPARED = {  # stage -> its outputs that must come back bit for bit
    "train": ("models/model.pt",),
    "evaluate": ("reports/metrics.json", "reports/predictions.csv"),
}
COVERED_FILE = Path("results/reproduction.json")


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def stale_dependencies(status: dict, tracked: set[str]) -> list[str]:
    """`stage: dep (change)` for every changed git-tracked dep or param in `dvc status --json`."""
    stale = []
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for dep, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # params.yaml: {key: new | modified | deleted}
                    stale += [f"{stage}: param {key} ({how})" for key, how in change.items()]
                elif dep in tracked:
                    stale.append(f"{stage}: {dep} ({change})")
    return stale


def check_lock() -> int:
    tracked = set(run("git", "ls-files").splitlines())
    status = json.loads(run("dvc", "status", "--json", "dvc.yaml") or "{}")
    stale = stale_dependencies(status, tracked)
    if stale:
        print(
            "error: the committed dvc.lock is stale (its results were not made by this commit's "
            "code, params and pins); run `dvc repro` and commit dvc.lock with its outputs. "
            "Changed since it was written:"
        )
        for line in stale:
            print(f"  {line}")
        return 1
    print("dvc.lock is current: no code, param or pin changed since it was written")
    return 0


def locked_md5(lock: dict) -> dict[str, str]:
    """path -> md5 of the compared files, from a dvc.lock's outs and metrics."""
    found = {}
    for stage, paths in COMPARED.items():
        outs = {o["path"]: o["md5"] for o in lock["stages"][stage].get("outs", [])}
        found |= {path: outs[path] for path in paths}
    return found


def file_md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def check_result() -> int:
    committed = locked_md5(yaml.safe_load(run("git", "show", "HEAD:dvc.lock")))
    differing = [p for p, md5 in committed.items() if file_md5(p) != md5]
    cpu = numerics.cpu_type()
    covered = json.loads(COVERED_FILE.read_text())["cpu_types"]
    if not differing:
        print(f"reproduced bit for bit on {cpu}: {', '.join(committed)}")
        if cpu not in covered:
            print(f"note: {cpu} is a CPU type not yet in {COVERED_FILE}; add it there and to the")
            print("list in docs/training.md, so the gate holds it to this from now on")
        return 0
    print(f"the run on {cpu} differs from the committed dvc.lock in: {', '.join(differing)}")
    diff = ["dvc", "metrics", "diff", "HEAD", "--targets", "reports/metrics.json", "--all"]
    shown = subprocess.run(diff, capture_output=True, text=True)
    print(shown.stdout or shown.stderr)
    if cpu in covered:
        print(f"error: {cpu} is a CPU type the committed result reproduced on ({COVERED_FILE});")
        print("the same commit must give the same bytes here. Fix: find what changed the numbers")
        print("(pins, numerics.portable, a stage's code) or rerun `dvc repro` and commit dvc.lock")
        return 1
    print(f"warning: {cpu} is not among the CPU types the result has reproduced on")
    print(f"({', '.join(covered)}); the gate passes, and docs/training.md lists this type as")
    print("not reproducing bit for bit until portable numerics cover it")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["lock"]:
        return check_lock()
    if argv == ["result"]:
        return check_result()
    print("usage: python scripts/check_reproduction.py lock | result", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
