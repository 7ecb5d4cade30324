"""Start-up of each stage (interpreter and imports, before any work) at an earlier commit and now.

    python benchmarks/startup.py --before 72e020b    # writes reports/startup.json

`python -c 'import pipeline.config, pipeline.<stage>'` in a copy of each tree, the two trees
alternating per repeat so that load from other processes hits both alike; best of --repeats,
wall and CPU seconds (CPU hardly depends on that load).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import REPO, cpu_info, scratch_copy, startup_seconds  # noqa: E402

from pipeline import atomic  # noqa: E402
from pipeline.__main__ import STAGES  # noqa: E402


def checkout(revision: str, target: Path) -> Path:
    """The tree of `revision` (git archive), without touching the working tree."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", required=True, help="git revision to compare the working tree with"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    revision = subprocess.run(
        ["git", "rev-parse", "--short", args.before],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            "before": checkout(revision, Path(tmp) / "before"),
            "after": scratch_copy(REPO, Path(tmp) / "after"),
        }
        best = {(tree, stage): (float("inf"), float("inf")) for tree in trees for stage in STAGES}
        for _ in range(args.repeats):
            for stage in STAGES:
                for tree, folder in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(folder)}
                    best[tree, stage] = min(
                        best[tree, stage], startup_seconds(folder, stage, env, 1)
                    )
        load.append(os.getloadavg()[0])
    rows = [
        {
            "stage": stage,
            **{
                f"{tree}_{kind}": best[tree, stage][i]
                for tree in trees
                for i, kind in enumerate(("seconds", "cpu_seconds"))
            },
        }
        for stage in STAGES
    ]
    for row in rows:
        print(
            f"{row['stage']:>9}: {row['before_seconds']:.2f} s ({row['before_cpu_seconds']:.2f} "
            f"CPU) -> {row['after_seconds']:.2f} s ({row['after_cpu_seconds']:.2f} CPU)"
        )
    result = {
        "command": f"python benchmarks/startup.py --before {revision}"
        + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "before": revision,
        "after": "working tree at "
        + subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "model": cpu_info()["model"],
            "cpu_count": os.cpu_count(),
            "loadavg_start": load[0],
            "loadavg_end": load[1],
        },
        "stages": rows,
    }
    atomic.write_json(REPO / "reports" / "startup.json", result)
    return result


if __name__ == "__main__":
    main()
