"""What portable numerics cost: the same work with `numerics.portable` on and off, side by side.

    python benchmarks/numerics_cost.py              # about 15 min on 2 cores; also `make bench`
    python benchmarks/numerics_cost.py --quick      # smoke run: 1 repeat, 1-epoch dvc repro

Kernel levels are fixed when torch loads, so each setting runs in its own process: one
training epoch at batch 64 (the defaults), one epoch of the `make best` preset (its -S params,
read from `make -n best`), and a whole `dvc repro` from the raw files in a fresh scratch copy.
The two settings alternate, so a change in the machine's load hits both. Each figure is the
fastest of the repeats. Writes reports/benchmarks-numerics.json and the table between the
numerics markers in docs/benchmarks.md (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"on": True, "off": False}
TABLE_START = "<!-- numerics:start (written by benchmarks/numerics_cost.py) -->"
TABLE_END = "<!-- numerics:end -->"


def preset_overrides(target: str = "best") -> dict[str, dict[str, Any]]:
    """`section -> {key: value}` from the -S arguments of `make -n <target>`: the preset as the
    Makefile runs it, so the two cannot drift apart."""
    shown = subprocess.run(
        ["make", "-s", "-n", target], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    words = shlex.split(shown.replace("\\\n", " "))
    overrides: dict[str, dict[str, Any]] = {}
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "-S":
            key, _, raw = value.partition("=")
            section, _, name = key.partition(".")
            overrides.setdefault(section, {})[name] = yaml.safe_load(raw)
    return overrides


def child_epoch(folder: Path, setting: str, preset: str) -> None:
    """In this process: pin (or not) as a stage does, then time one epoch; print the JSON."""
    from pipeline.__main__ import pin_kernels
    from pipeline.config import parse_params

    pin_kernels(parse_params({"numerics": {"portable": SETTINGS[setting]}}), restart=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run  # torch loads here, after the pinning

    overrides = preset_overrides() if preset == "best" else {}
    params = run.with_overrides(run.load_params(REPO / "params.yaml"), overrides)
    run.torch.set_num_threads(params.train.threads)
    train, _, mean, std = run.load_split(folder)
    wall, cpu = run.epoch_seconds(train, params, mean, std)
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu}))


def epoch_in_child(folder: Path, setting: str, preset: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), setting, preset],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"error: the {preset} epoch ({setting}) failed: {done.stderr[-500:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(repeats: int, quick: bool) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run

    base = run.load_params(REPO / "params.yaml")
    if quick:
        base = run.with_overrides(base, {"train": {"epochs": 1}, "report": {"tsne_samples": 200}})
    with tempfile.TemporaryDirectory(prefix="bench-numerics-") as scratch_dir:
        scratch = Path(scratch_dir)
        data = run.scratch_copy(REPO, scratch / "data")
        run.write_params(data, base)
        env = run.stage_env(data, base.train.threads)
        for stage in ("download", "stats", "split"):
            if run.run_stage(data, stage, env).returncode:
                raise SystemExit(f"error: the {stage} stage failed; see the line above")
        samples: dict[str, dict[str, list[float]]] = {}
        for repeat in range(repeats):
            order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
            for setting in order:
                for preset in ("b64", "best"):
                    timed = epoch_in_child(data, setting, preset)
                    samples.setdefault(f"{preset}_epoch", {}).setdefault(setting, []).append(
                        timed["seconds"]
                    )
                    print(f"  {preset} epoch, portable {setting}: {timed['seconds']:.2f} s")
                copy = run.scratch_copy(REPO, scratch / f"repro-{repeat}-{setting}")
                params = run.with_overrides(base, {"numerics": {"portable": SETTINGS[setting]}})
                run.write_params(copy, params)
                repro = run.dvc_repro(copy, run.stage_env(copy, base.train.threads))
                if repro["returncode"]:
                    raise SystemExit(
                        f"error: dvc repro (portable {setting}) failed: {repro['error']}"
                    )
                samples.setdefault("dvc_repro", {}).setdefault(setting, []).append(repro["seconds"])
    rows = {
        name: {
            "on_seconds": min(times["on"]),
            "off_seconds": min(times["off"]),
            "cost": min(times["on"]) / min(times["off"]) - 1,
            "samples": times,
        }
        for name, times in samples.items()
    }
    from pipeline import numerics

    return {
        "command": "python benchmarks/numerics_cost.py" + (" --quick" if quick else ""),
        "quick": quick,
        "repeats": repeats,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": run.source_commit(),
        "machine": numerics.environment(),
        "best_preset": preset_overrides(),
        "rows": rows,
    }


def result_name(quick: bool) -> str:
    return "benchmarks-numerics-quick.json" if quick else "benchmarks-numerics.json"


def markdown_table(result: dict[str, Any]) -> str:
    names = {
        "b64_epoch": "one epoch, defaults (batch 64, one thread)",
        "best_epoch": "one epoch, `make best` preset (batch 256, two threads)",
        "dvc_repro": "whole `dvc repro` from raw files",
    }
    lines = [
        "| work | portable on, s | off, s | cost of portability |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in names.items():
        row = result["rows"][key]
        lines.append(
            f"| {label} | {row['on_seconds']:.2f} | {row['off_seconds']:.2f} | {row['cost']:+.0%} |"
        )
    machine = result["machine"]
    lines += [
        "",
        f"Measured by `{result['command']}` ({result['repeats']} alternated repeats, fastest "
        f"kept) on {machine['cpu_type']}, torch {machine['torch']}, MKL {machine['mkl']}, "
        f"{result['finished']}, commit {result['commit'][:7]}; "
        f"reports/{result_name(result['quick'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1-epoch dvc repro")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs per setting")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # FOLDER on|off b64|best
    args = parser.parse_args(argv)
    if args.child:
        child_epoch(Path(args.child[0]), args.child[1], args.child[2])
        return 0
    result = measure(1 if args.quick else args.repeats, args.quick)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run

    run.atomic.write_json(REPO / "reports" / result_name(args.quick), result)
    table = markdown_table(result)
    print(table)
    if not args.quick:
        page = run.PAGE
        text = page.read_text()
        start, end = text.find(TABLE_START), text.find(TABLE_END)
        if start < 0 or end < start:
            raise SystemExit(f"error: {page} lacks the {TABLE_START} ... {TABLE_END} markers")
        run.atomic.write_text(
            page, text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
