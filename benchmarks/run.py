"""Benchmarks against the reference loop, scikit-learn, the matmul limit, plus memory and end to
end.

    python benchmarks/run.py            # full run (also `make bench`), about 20-30 min on 2 cores
    python benchmarks/run.py --quick    # smoke run: 1 epoch, small samples, docs untouched

Everything runs in one invocation on this machine with one fixed torch/BLAS thread count
(--threads, reported). Real data comes from the pipeline's own download stage, so set
MNIST_MIRROR (or let the stage use its official mirrors). The pipeline stages run as
subprocesses in a scratch copy of this working tree (tracked and untracked, not ignored files),
with their own MLflow store, so nothing here touches the repository's data, models or mlflow.db.

Writes reports/benchmarks.json (reports/benchmarks-quick.json with --quick) and, in a full run,
the table between the bench markers in docs/benchmarks.md; then runs benchmarks/numerics_cost.py
(the cost of portable numerics, its own JSON and table) and benchmarks/serving.py (the champion
served: its own JSON and table, and the `serving` key of benchmarks.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import numerics_cost  # noqa: E402
import serving  # noqa: E402
from train_throughput import seed_loop, torchvision_root  # noqa: E402

import pipeline.learner.trainer  # noqa: E402
from pipeline import atomic  # noqa: E402
from pipeline.__main__ import STAGES  # noqa: E402
from pipeline.config import Params, load_params, parse_params  # noqa: E402
from pipeline.data.loading import load_dataset  # noqa: E402
from pipeline.learner.augment import Augmentation  # noqa: E402
from pipeline.learner.model import MLP, Architecture  # noqa: E402
from pipeline.learner.trainer import Split, Trainer  # noqa: E402
from pipeline.paths import (  # noqa: E402
    LAST_CHECKPOINT_FILE,
    METRICS_FILE,
    RAW_DIR,
    STATS_FILE,
    TRAIN_INDEX_FILE,
    VALID_INDEX_FILE,
)

TARGET_ACCURACY = 0.98
SEED_BATCHES_PER_EPOCH = 938  # 60,000 torchvision training images at batch 64
PAGE = REPO / "docs" / "benchmarks.md"
TABLE_START = "<!-- bench:start (written by benchmarks/run.py) -->"
TABLE_END = "<!-- bench:end -->"


@dataclass
class StageRun:
    stage: str
    seconds: float
    peak_rss_mb: float
    returncode: int
    error: str  # last stderr line when the stage failed, else ""


# ---------------------------------------------------------------- scratch copies and subprocesses


def scratch_copy(source: Path, target: Path) -> Path:
    """The working tree as git sees it (tracked plus untracked, not ignored), without outputs."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=source,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = source / name
        if src.is_file():  # a tracked file deleted in the work tree is skipped
            dst = target / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return target


def write_params(folder: Path, params: Params, name: str = "params.yaml") -> Path:
    path = folder / name
    atomic.write_text(path, yaml.safe_dump(params.model_dump(by_alias=True), sort_keys=False))
    return path


def with_overrides(params: Params, overrides: dict[str, dict[str, Any]]) -> Params:
    raw = params.model_dump(by_alias=True)
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return parse_params(raw)


def stage_env(folder: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
        }
    )
    env.pop("DVC_ROOT", None)
    return env


# Forks the command and reports that child's peak RSS on its own last stderr line. A child forked
# straight from this process would inherit its high-water mark (torch and MNIST already loaded):
# Linux keeps ru_maxrss across exec. Forked from this small launcher, the count starts near zero.
RSS_MARKER = "bench-peak-rss-kib="
LAUNCHER = f"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print("\\n{RSS_MARKER}" + str(usage.ru_maxrss), file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MiB) of the command (the largest process of its tree that it
    waited for), exit code, and the last stderr line when it failed."""
    with tempfile.TemporaryFile() as err:  # unnamed: nothing to lose if /tmp is tidied meanwhile
        started = time.perf_counter()
        code = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        ).returncode
        seconds = time.perf_counter() - started
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    if not lines or not lines[-1].startswith(RSS_MARKER):
        raise SystemExit(
            f"error: the launcher of {' '.join(cmd)} ended without its report: {lines[-1:]}"
        )
    rss_kib = int(lines.pop()[len(RSS_MARKER) :])  # KiB on Linux
    return seconds, rss_kib / 1024, code, (lines[-1] if lines and code else "")


def run_stage(
    folder: Path, stage: str, env: dict[str, str], params_file: str = "params.yaml"
) -> StageRun:
    seconds, rss, code, error = run_measured(
        [sys.executable, "-m", "pipeline", stage, "--params", params_file], folder, env
    )
    print(
        f"  {stage}: {seconds:.1f} s, peak RSS {rss:.0f} MiB"
        + (f", FAILED: {error}" if code else ""),
        file=sys.stderr,
    )
    return StageRun(stage, seconds, rss, code, error)


def available_stages(folder: Path) -> list[str]:
    return [s for s in STAGES if (folder / "pipeline" / f"{s}.py").exists()]


def stage_memory(folder: Path, env: dict[str, str]) -> list[StageRun]:
    """Each stage module in pipeline order as `python -m pipeline <stage>`, until one fails."""
    runs = []
    for stage in available_stages(folder):
        runs.append(run_stage(folder, stage, env))
        if runs[-1].returncode:
            break
    return runs


def startup_seconds(
    folder: Path, stage: str, env: dict[str, str], repeats: int
) -> tuple[float, float]:
    """Best-of-`repeats` wall and CPU seconds of `python -c 'import pipeline.<stage>'`: the
    interpreter start and imports every `python -m pipeline <stage>` pays before any work."""
    best = (math.inf, math.inf)
    for _ in range(repeats):
        before, started = os.times(), time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", f"import pipeline.config, pipeline.stages.{stage}"],
            cwd=folder,
            env=env,
            check=True,
        )
        wall, after = time.perf_counter() - started, os.times()
        cpu = (
            after.children_user
            - before.children_user
            + after.children_system
            - before.children_system
        )
        best = min(best, (wall, cpu))
    return best


def startup_vs_work(
    folder: Path, env: dict[str, str], stages: list[StageRun], repeats: int
) -> list[dict[str, Any]]:
    """Per stage: its run as `python -m pipeline <stage>` (what `dvc repro` runs), split into
    start-up (interpreter and imports) and work (the rest)."""
    rows = []
    for run in stages:
        wall, cpu = startup_seconds(folder, run.stage, env, repeats)
        rows.append(
            {
                "stage": run.stage,
                "seconds": run.seconds,
                "startup_seconds": wall,
                "startup_cpu_seconds": cpu,
                "work_seconds": run.seconds - wall,
            }
        )
        print(
            f"  {run.stage}: start-up {wall:.2f} s ({cpu:.2f} s CPU) of {run.seconds:.1f} s",
            file=sys.stderr,
        )
    return rows


def dvc_stage_names(folder: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        ["dvc", "stage", "list", "--name-only"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def dvc_repro(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """`dvc repro` from the raw files in a fresh git repository: the longest run of pipeline
    stages, in order from download, that dvc.yaml defines (stages not written yet are listed)."""
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "benchmark snapshot"], cwd=folder, check=True)
    defined = dvc_stage_names(folder, env)
    chain = []
    for stage in STAGES:
        if stage not in defined:
            break
        chain.append(stage)
    if not chain:
        return {
            "stages": [],
            "missing_stages": list(STAGES),
            "seconds": None,
            "returncode": None,
            "error": "",
        }
    # Every stage named: `dvc repro promote` alone skips report, which promote does not depend on.
    before = os.times()
    seconds, rss, code, error = run_measured(["dvc", "repro", *chain], folder, env)
    after = os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("children_user", "children_system"))
    print(
        f"  dvc repro {' '.join(chain)}: {seconds:.1f} s ({cpu:.1f} s CPU)"
        + (f", FAILED: {error}" if code else ""),
        file=sys.stderr,
    )
    return {
        "stages": chain,
        "missing_stages": [s for s in STAGES if s not in chain],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": rss,
        "returncode": code,
        "error": error,
    }


# ---------------------------------------------------------------- training runs of the pipeline


def read_history(folder: Path) -> list[dict[str, float]]:
    """The train stage's rows per epoch with their wall `seconds`, from models/last.pt:
    reports/train_history.csv holds no wall time (pipeline/artifacts.py's HISTORY_COLUMNS)."""
    state = torch.load(folder / LAST_CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return [{k: float(v) for k, v in row.items()} for row in state["history"]]


def seconds_to_accuracy(
    history: list[dict[str, float]], target: float
) -> tuple[float | None, int | None]:
    """Cumulative training seconds (validation included) until valid_acc first reaches `target`."""
    total = 0.0
    for row in history:
        total += row["seconds"]
        if row["valid_acc"] >= target:
            return total, int(row["epoch"])
    return None, None


def batch_lr(batch: int, base_lr: float, base_batch: int = 64) -> float:
    """Square-root scaling of Adam's learning rate with the batch size."""
    return base_lr * math.sqrt(batch / base_batch)


def training_run(folder: Path, params: Params, env: dict[str, str], name: str) -> dict[str, Any]:
    """train + evaluate stages with these params: the real pipeline, real data, test accuracy."""
    params_file = write_params(folder, params, f"{name}.yaml").name
    runs = [run_stage(folder, stage, env, params_file) for stage in ("train", "evaluate")]
    failed = [r for r in runs if r.returncode]
    if failed:
        raise SystemExit(f"error: {failed[0].stage} failed for {name}: {failed[0].error}")
    return summarize_run(folder, params, runs[0])


def summarize_run(folder: Path, params: Params, train: StageRun) -> dict[str, Any]:
    history = read_history(folder)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    to98, epoch98 = seconds_to_accuracy(history, TARGET_ACCURACY)
    return {
        "batch_size": params.train.batch_size,
        "lr": params.train.lr,
        "lr_schedule": params.train.lr_schedule,
        "epochs": params.train.epochs,
        "test_accuracy": metrics["test_accuracy"],
        "median_epoch_seconds": float(np.median([row["seconds"] for row in history])),
        "seconds_to_98_valid": to98,
        "epoch_to_98_valid": epoch98,
        "train_stage_seconds": train.seconds,
        "train_peak_rss_mb": train.peak_rss_mb,
    }


# ---------------------------------------------------------------- in-process measurements


def load_split(folder: Path) -> tuple[Split, Split, float, float]:
    stats = json.loads((folder / STATS_FILE).read_text())
    data = load_dataset(folder / RAW_DIR, 28)
    train_idx = torch.from_numpy(np.load(folder / TRAIN_INDEX_FILE))
    valid_idx = torch.from_numpy(np.load(folder / VALID_INDEX_FILE))

    def split(index: torch.Tensor) -> Split:
        return Split(data.train_images[index], data.train_labels[index])

    return split(train_idx), split(valid_idx), stats["mean"], stats["std"]


def epoch_seconds(
    data: Split, params: Params, mean: float, std: float, repeats: int = 1
) -> tuple[float, float]:
    """Wall and CPU seconds of one Trainer.train_epoch (augmentation included, no validation);
    the fastest of `repeats` fresh runs, as load from other processes only ever adds time."""
    best = (math.inf, math.inf)
    for _ in range(repeats):
        torch.manual_seed(params.train.seed)
        model = MLP(Architecture.from_params(params), mean, std)
        steps = -(-len(data.labels) // params.train.batch_size)
        trainer = Trainer(model, params.train, Augmentation.from_params(params), steps)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train_epoch(data, 1)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


PHASES = ("data_augmentation", "forward_backward", "optimizer")


def epoch_breakdown(data: Split, params: Params, mean: float, std: float) -> dict[str, float]:
    """One Trainer.train_epoch with timers around its parts: data_augmentation (each chunk's
    pipeline.learner.augment.augment call), forward_backward (model, loss, backward), optimizer
    (zero_grad, step, lr schedule); other: indexing, gradient norms, bookkeeping, the loop."""
    phases = dict.fromkeys(PHASES, 0.0)

    def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[phase] += time.perf_counter() - started

        return wrapper

    torch.manual_seed(params.train.seed)
    model = MLP(Architecture.from_params(params), mean, std)
    trainer = Trainer(
        model,
        params.train,
        Augmentation.from_params(params),
        -(-len(data.labels) // params.train.batch_size),
    )
    trainer.net, trainer.loss = (
        timed("forward_backward", trainer.net),
        timed("forward_backward", trainer.loss),
    )
    for owner, name in (
        (trainer.optimizer, "step"),
        (trainer.optimizer, "zero_grad"),
        (trainer.scheduler, "step"),
    ):
        if owner is not None:
            setattr(owner, name, timed("optimizer", getattr(owner, name)))
    backward, augment = torch.Tensor.backward, pipeline.learner.trainer.augment
    torch.Tensor.backward = timed("forward_backward", backward)
    pipeline.learner.trainer.augment = timed("data_augmentation", augment)
    try:
        with warnings.catch_warnings():  # the scheduler notices that optimizer.step is wrapped
            warnings.simplefilter("ignore", UserWarning)
            started = time.perf_counter()
            trainer.train_epoch(data, 1)
            total = time.perf_counter() - started
    finally:
        torch.Tensor.backward, pipeline.learner.trainer.augment = backward, augment
    return {**phases, "other": total - sum(phases.values()), "total": total}


def throughput(
    raw_dir: Path,
    scratch: Path,
    train: Split,
    params: Params,
    mean: float,
    std: float,
    batches: int,
    repeats: int,
) -> dict[str, Any]:
    """Reference loop vs ours at batch 64 on the same number of images, alternating so that
    load from other processes hits both alike. CPU seconds (with one thread: the time on an
    idle core) are kept beside the wall times, as they hardly depend on that load."""
    images = min(batches * 64, len(train.labels))
    data = Split(train.images[:images], train.labels[:images])
    seed_s, seed_cpu, ours_s, ours_cpu, seed_parts, ours_parts = [], [], [], [], [], []
    root = torchvision_root(raw_dir, scratch)
    for repeat in range(repeats):
        cpu = time.process_time()
        seconds, parts = seed_loop(root, -(-images // 64), mean, std, repeat)
        seed_s.append(seconds)
        seed_parts.append(parts)
        seed_cpu.append(time.process_time() - cpu)  # includes reading the IDX files, ~0.1 s
        wall, cpu = epoch_seconds(data, params, mean, std)
        ours_s.append(wall)
        ours_cpu.append(cpu)
        ours_parts.append(epoch_breakdown(data, params, mean, std))
        print(
            f"  repeat {repeat + 1}: reference {seed_s[-1]:.2f} s, ours {ours_s[-1]:.2f} s",
            file=sys.stderr,
        )
    # The breakdowns of the fastest timed runs (timers add a little: their totals sit beside).
    breakdown = {
        "reference": min(seed_parts, key=lambda p: p["total"]),
        "ours": min(ours_parts, key=lambda p: p["total"]),
    }
    return {
        "images": images,
        "seed_seconds": seed_s,
        "ours_seconds": ours_s,
        "seed_cpu_seconds": seed_cpu,
        "ours_cpu_seconds": ours_cpu,
        "seed_images_per_s": images / min(seed_s),
        "ours_images_per_s": images / min(ours_s),
        "speedup_vs_seed": min(seed_s) / min(ours_s),
        "speedup_vs_seed_cpu": min(seed_cpu) / min(ours_cpu),
        "breakdown_seconds": breakdown,
    }


def layer_sizes(arch: Architecture) -> list[tuple[int, int]]:
    sizes = [arch.input_size, *arch.hidden, 10]
    return list(itertools.pairwise(sizes))


def epoch_flops(images: int, arch: Architecture) -> float:
    """The usual estimate: forward 2*N*sum(fan_in*fan_out), backward twice that."""
    return 3 * 2 * images * sum(i * o for i, o in layer_sizes(arch))


def training_flops(images: int, arch: Architecture) -> float:
    """What autograd really multiplies: the estimate less the first layer's input gradient,
    which is never computed because the pixels need no gradient (2.1x forward, not 3x, here)."""
    fan_in, fan_out = layer_sizes(arch)[0]
    return epoch_flops(images, arch) - 2 * images * fan_in * fan_out


def step_operands(batch: int, arch: Architecture) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (a, b) of every a @ b autograd runs in one step of nn.Linear layers, in its memory
    layouts: forward x @ W^T, weight gradient g^T @ x, input gradient g @ W (all but layer 1)."""
    operands = []
    for layer, (fan_in, fan_out) in enumerate(layer_sizes(arch)):
        x, w, g = (
            torch.randn(batch, fan_in),
            torch.randn(fan_out, fan_in),
            torch.randn(batch, fan_out),
        )
        operands += [(x, w.t()), (g.t(), x)]
        if layer:
            operands.append((g, w))
    return operands


def matmul_flops(operands: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return float(sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in operands))


def matmul_step_seconds(
    batch: int, arch: Architecture, min_seconds: float, repeats: int
) -> tuple[float, float]:
    """Best-of-`repeats` wall and CPU time of the matmuls of one training step, float32, torch's
    own kernels."""
    operands = step_operands(batch, arch)
    for a, b in operands:  # warm up
        a @ b
    best = (math.inf, math.inf)
    for _ in range(repeats):
        loops, started, cpu = 0, time.perf_counter(), time.process_time()
        while True:
            for a, b in operands:
                a @ b
            loops += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        best = min(best, (elapsed / loops, (time.process_time() - cpu) / loops))
    return best


def hardware_limit(
    batches: list[int], arch: Architecture, images: int, min_seconds: float, repeats: int
) -> dict[int, dict[str, float]]:
    """Lower bound on an epoch's time at each batch size: its matmuls alone, at the speed
    measured for that batch size's shapes."""
    out = {}
    for b in batches:
        wall, cpu = matmul_step_seconds(b, arch, min_seconds, repeats)
        step = training_flops(b, arch)
        epoch = training_flops(images, arch)
        out[b] = {
            "gflops": step / wall / 1e9,
            "limit_epoch_seconds": epoch / step * wall,
            "gflops_cpu": step / cpu / 1e9,
            "limit_epoch_cpu_seconds": epoch / step * cpu,
        }
        print(
            f"  matmuls at batch {b}: {out[b]['gflops']:.1f} GFLOP/s -> epoch >= "
            f"{out[b]['limit_epoch_seconds']:.3f} s",
            file=sys.stderr,
        )
    return out


def peak_gemm(threads: int, size: int, min_seconds: float, repeats: int) -> dict[str, float]:
    """The machine's float32 matmul peak: large square products on `threads` threads, best of
    `repeats` (the other hardware limit, beside the one-thread rate at our shapes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm up
        best = math.inf
        for _ in range(repeats):
            loops, started = 0, time.perf_counter()
            while time.perf_counter() - started < min_seconds:
                a @ b
                loops += 1
            best = min(best, (time.perf_counter() - started) / loops)
    finally:
        torch.set_num_threads(previous)
    gflops = 2 * size**3 / best / 1e9
    print(
        f"  peak matmul on {threads} threads ({size}x{size}): {gflops:.0f} GFLOP/s", file=sys.stderr
    )
    return {"threads": threads, "size": size, "gflops": gflops}


def source_commit() -> str:
    """The commit measured, with `+changes` when the working tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


def cpu_info() -> dict[str, Any]:
    """CPU model and feature flags (AVX-512, AMX, ...): they set both loops' speed, so the ratio."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "flags": fields.get("flags", "").split(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def sklearn_seconds_to(
    train: Split,
    valid: Split,
    mean: float,
    std: float,
    threads: int,
    max_epochs: int,
    seed: int,
    target: float,
) -> dict[str, Any]:
    """MLPClassifier (250, 100), Adam, batch 64, one partial_fit epoch at a time until the
    validation accuracy reaches `target`; same normalised float32 pixels, no augmentation."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    def features(split: Split) -> np.ndarray:
        return ((split.images.flatten(1).numpy().astype(np.float32) / 255) - mean) / std

    x, y = features(train), train.labels.numpy()
    xv, yv = features(valid), valid.labels.numpy()
    model = MLPClassifier(
        hidden_layer_sizes=(250, 100),
        solver="adam",
        batch_size=64,
        alpha=0.0,
        learning_rate_init=0.001,
        random_state=seed,
    )
    total, accuracies = 0.0, []
    with threadpool_limits(threads):
        for epoch in range(1, max_epochs + 1):
            started = time.perf_counter()
            model.partial_fit(x, y, classes=np.arange(10))
            accuracies.append(float((model.predict(xv) == yv).mean()))
            total += time.perf_counter() - started
            print(
                f"  sklearn epoch {epoch}: valid accuracy {accuracies[-1]:.4f}, {total:.1f} s",
                file=sys.stderr,
            )
            if accuracies[-1] >= target:
                return {"seconds_to_98": total, "epochs": epoch, "valid_accuracy": accuracies}
    return {
        "seconds_to_98": None,
        "epochs": None,
        "valid_accuracy": accuracies,
        "epoch_cap": max_epochs,
    }


# ---------------------------------------------------------------- report


def pick_best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the shortest epoch among those that reached the target test accuracy."""
    good = [r for r in runs if r["test_accuracy"] >= TARGET_ACCURACY]
    return min(good, key=lambda r: r["epoch_seconds"]) if good else None


def fmt(value: Any, digits: int = 1, suffix: str = "", missing: str = "not reached") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown_table(r: dict[str, Any]) -> str:
    best, repro = r["best_batch"] or "-", r["dvc_repro"]
    rows = [
        ("Reference loop (torchvision + PIL, batch 64), images/s", fmt(r["seed_images_per_s"], 0)),
        ("Ours (batch 64), images/s", fmt(r["ours_images_per_s"], 0)),
        (
            "Speedup vs reference, wall (CPU) time",
            f"{fmt(r['speedup_vs_seed'], 1, 'x')} ({fmt(r['speedup_vs_seed_cpu'], 1, 'x')})",
        ),
        (
            "scikit-learn MLPClassifier (batch 64), seconds to 98% valid",
            fmt(r["sklearn_seconds_to_98"], 1),
        ),
        ("Ours (batch 64), seconds to 98% valid", fmt(r["ours_seconds_to_98"], 1)),
        ("Ours, epoch at batch 64, s", fmt(r["ours_epoch_seconds_b64"], 2)),
        (
            f"Ours, epoch at batch {best} (fastest with >= 98% test), s",
            fmt(r["ours_epoch_seconds_best"], 2, missing="n/a"),
        ),
        (
            f"Matmul lower bound on an epoch at batch {best}, s",
            fmt(r["limit_epoch_seconds"], 2, missing="n/a"),
        ),
        (
            f"Ours at batch {best} / lower bound, wall (CPU) time",
            f"{fmt(r['ratio_to_limit'], 1, 'x', 'n/a')} "
            f"({fmt(r['ratio_to_limit_cpu'], 1, 'x', 'n/a')})",
        ),
        (
            f"Matmul peak, all {r['peak_matmul_all_cores']['threads']} cores "
            f"({r['peak_matmul_all_cores']['size']}² float32), GFLOP/s; epoch bound at that "
            "rate, s",
            f"{fmt(r['peak_matmul_all_cores']['gflops'], 0)}; "
            f"{fmt(r['peak_matmul_all_cores']['limit_epoch_seconds'], 2)}",
        ),
        (
            "Ours at batch 64 / lower bound, wall (CPU) time",
            f"{fmt(r['ratio_to_limit_b64'], 1, 'x')} ({fmt(r['ratio_to_limit_b64_cpu'], 1, 'x')})",
        ),
        (
            "`dvc repro` from raw files ({}), s (CPU s)".format(
                ", ".join(r["dvc_repro"]["stages"]) or "no stages"
            ),
            f"{fmt(repro['seconds'], 0)} ({fmt(repro.get('cpu_seconds'), 0, missing='n/a')})",
        ),
    ]
    rows += [
        (f"Peak RSS of `python -m pipeline {s['stage']}`, MiB", fmt(s["peak_rss_mb"], 0))
        for s in r["stages"]
    ]
    lines = ["| measurement | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines.append(
        "| batch size | lr, schedule | test accuracy | epoch, s (CPU s) "
        "| matmul bound, s (CPU s) | matmul GFLOP/s |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for run in r["batch_runs"]:
        limit = r["limits"][str(run["batch_size"])]
        lines.append(
            f"| {run['batch_size']} | {run['lr']:.2g}, {run['lr_schedule']} | "
            f"{run['test_accuracy']:.4f} | {run['epoch_seconds']:.2f} "
            f"({run['epoch_cpu_seconds']:.2f}) | {limit['limit_epoch_seconds']:.2f} "
            f"({limit['limit_epoch_cpu_seconds']:.2f}) | {limit['gflops']:.0f} |"
        )
    lines += ["", *breakdown_table(r["throughput"]), "", *startup_table(r["dvc_repro"])]
    machine = r["machine"]
    load = machine["loadavg"]
    lines += [
        "",
        (
            f"Measured by `{r['command']}` on {machine['cpu_count']} CPU cores "
            f"({machine['model']}; torch CPU capability {machine['torch_cpu_capability']}), "
            f"torch {machine['torch']}, {r['threads']} thread(s), {r['finished']}; 1-minute load "
            f"average {load['start']:.1f} at the start, {max(load.values()):.1f} at most, "
            f"{load['end']:.1f} at the end."
        ),
    ]
    return "\n".join(lines)


def breakdown_table(speed: dict[str, Any]) -> list[str]:
    """Where an epoch of each loop goes (the fastest timed repeat; timers add a little)."""
    parts = speed["breakdown_seconds"]
    lines = [
        f"| part of an epoch ({speed['images']:,} images, batch 64), s (share) | reference loop "
        "| ours |",
        "| --- | --- | --- |",
    ]
    for phase in (*PHASES, "other", "total"):
        cells = [
            f"{parts[loop][phase]:.2f} ({parts[loop][phase] / parts[loop]['total']:.0%})"
            for loop in ("reference", "ours")
        ]
        lines.append(f"| {phase.replace('_', ' + ')} | {cells[0]} | {cells[1]} |")
    return lines


def startup_table(repro: dict[str, Any]) -> list[str]:
    """`python -m pipeline <stage>` runs split into start-up and work, and what `dvc repro` adds."""
    rows = repro.get("per_stage", [])
    lines = [
        "| stage | run alone, s | start-up (imports), s (CPU s) | work, s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {row['stage']} | {row['seconds']:.1f} | {row['startup_seconds']:.2f} "
        f"({row['startup_cpu_seconds']:.2f}) | {row['work_seconds']:.1f} |"
        for row in rows
    ]
    if rows and repro.get("seconds"):
        total = sum(row["seconds"] for row in rows)
        startup = sum(row["startup_seconds"] for row in rows)
        lines.append(
            f"| all, run alone (`dvc repro`: {repro['seconds']:.0f}) | {total:.1f} | "
            f"{startup:.1f} | {total - startup:.1f} |"
        )
    return lines


def update_page(page: Path, table: str) -> None:
    text = page.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(
            f"error: {page} lacks the {TABLE_START} ... {TABLE_END} markers; add them where the "
            "table goes"
        )
    atomic.write_text(page, text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:])


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 epoch, small samples, docs untouched"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads everywhere (default 1)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[128, 256, 512, 1024],
        help="batch sizes tried against batch 64 for the fastest that reaches 98%% test accuracy",
    )
    parser.add_argument("--keep", type=Path, help="keep the scratch copies in this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.update(
        {
            k: str(args.threads)
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        }
    )
    command = (
        "python benchmarks/run.py"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads != 1 else "")
    )
    load = {"start": os.getloadavg()[0]}  # 1-minute load average as each part begins

    base = with_overrides(load_params(REPO / "params.yaml"), {"train": {"threads": args.threads}})
    if args.quick:
        base = with_overrides(base, {"train": {"epochs": 1}, "report": {"tsne_samples": 200}})
    repeats = 1 if args.quick else 3
    batches = [64, *[b for b in (args.batches[:1] if args.quick else args.batches) if b != 64]]

    scratch = Path(tempfile.mkdtemp(prefix="bench-")) if args.keep is None else args.keep
    stages_dir, dvc_dir = scratch / "stages", scratch / "dvc"
    try:
        print(f"== stages one by one in {stages_dir} (peak RSS per stage)", file=sys.stderr)
        scratch_copy(REPO, stages_dir)
        write_params(stages_dir, base)
        env = stage_env(stages_dir, args.threads)
        stages = stage_memory(stages_dir, env)
        ran = {s.stage for s in stages if s.returncode == 0}
        if not {"download", "stats", "split"} <= ran:
            raise SystemExit(
                "error: download, stats and split must succeed for the benchmarks; see the "
                "lines above"
            )
        print("== start-up (interpreter and imports) of each stage", file=sys.stderr)
        load["startup"] = os.getloadavg()[0]
        startup = startup_vs_work(
            stages_dir, env, [s for s in stages if s.returncode == 0], repeats
        )

        print("== reference loop vs ours at batch 64", file=sys.stderr)
        load["throughput"] = os.getloadavg()[0]
        train, valid, mean, std = load_split(stages_dir)
        speed = throughput(
            stages_dir / RAW_DIR,
            scratch / "torchvision",
            train,
            base,
            mean,
            std,
            batches=60 if args.quick else SEED_BATCHES_PER_EPOCH,
            repeats=repeats,
        )

        print("== scikit-learn to 98% validation accuracy", file=sys.stderr)
        sk = sklearn_seconds_to(
            train,
            valid,
            mean,
            std,
            args.threads,
            max_epochs=1 if args.quick else 20,
            seed=base.train.seed,
            target=TARGET_ACCURACY,
        )

        print(
            "== batch sizes: real training runs (train + evaluate stages) and epoch times",
            file=sys.stderr,
        )
        batch_runs = []
        for b in batches:
            # Larger batches take fewer, larger steps: lr scaled up, then decayed to 0 (cosine).
            params = with_overrides(
                base,
                {
                    "train": {
                        "batch_size": b,
                        "lr": batch_lr(b, base.train.lr),
                        "lr_schedule": "cosine" if b != 64 else base.train.lr_schedule,
                    }
                },
            )
            if b == 64 and "evaluate" in ran:
                run = summarize_run(
                    stages_dir, params, next(s for s in stages if s.stage == "train")
                )
            else:
                run = training_run(stages_dir, params, env, f"bench-b{b}")
            run["epoch_seconds"], run["epoch_cpu_seconds"] = epoch_seconds(
                train, params, mean, std, repeats
            )
            print(
                f"  batch {b}: test accuracy {run['test_accuracy']:.4f}, epoch "
                f"{run['epoch_seconds']:.2f} s",
                file=sys.stderr,
            )
            batch_runs.append(run)
        b64 = batch_runs[0]
        best = pick_best(batch_runs)

        print("== matmul lower bound", file=sys.stderr)
        arch = Architecture.from_params(base)
        load["matmul"] = os.getloadavg()[0]
        limits = hardware_limit(
            batches,
            arch,
            len(train.labels),
            min_seconds=0.2 if args.quick else 1.0,
            repeats=2 if args.quick else 5,
        )
        peak = peak_gemm(
            os.cpu_count() or 1,
            2048,
            min_seconds=0.5 if args.quick else 2.0,
            repeats=2 if args.quick else 3,
        )
        peak["limit_epoch_seconds"] = training_flops(len(train.labels), arch) / (
            peak["gflops"] * 1e9
        )

        print("== dvc repro from raw files", file=sys.stderr)
        scratch_copy(REPO, dvc_dir)
        write_params(dvc_dir, base)
        load["dvc_repro"] = os.getloadavg()[0]
        repro = dvc_repro(dvc_dir, stage_env(dvc_dir, args.threads))
        repro["per_stage"] = startup
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)

    best_limit = limits[best["batch_size"]]["limit_epoch_seconds"] if best else None
    result = {
        "command": command,
        "quick": args.quick,
        "threads": args.threads,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": source_commit(),
        "machine": {
            **cpu_info(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg": {**load, "end": os.getloadavg()[0]},
        },
        "seed_images_per_s": speed["seed_images_per_s"],
        "ours_images_per_s": speed["ours_images_per_s"],
        "speedup_vs_seed": speed["speedup_vs_seed"],
        "sklearn_seconds_to_98": sk["seconds_to_98"],
        "ours_seconds_to_98": b64["seconds_to_98_valid"],
        "limit_epoch_seconds": best_limit,
        "limit_epoch_seconds_b64": limits[64]["limit_epoch_seconds"],
        "ours_epoch_seconds_b64": b64["epoch_seconds"],
        "ratio_to_limit_b64": b64["epoch_seconds"] / limits[64]["limit_epoch_seconds"],
        "ratio_to_limit_b64_cpu": b64["epoch_cpu_seconds"] / limits[64]["limit_epoch_cpu_seconds"],
        "ours_epoch_seconds_best": best["epoch_seconds"] if best else None,
        "best_batch": best["batch_size"] if best else None,
        "ratio_to_limit": best["epoch_seconds"] / best_limit if best else None,
        "speedup_vs_seed_cpu": speed["speedup_vs_seed_cpu"],
        "ratio_to_limit_cpu": (
            best["epoch_cpu_seconds"] / limits[best["batch_size"]]["limit_epoch_cpu_seconds"]
            if best
            else None
        ),
        "epoch_flops": training_flops(len(train.labels), arch),
        "epoch_flops_3x_forward": epoch_flops(len(train.labels), arch),
        "throughput": speed,
        "sklearn": sk,
        "batch_runs": batch_runs,
        "limits": {str(b): v for b, v in limits.items()},
        "peak_matmul_all_cores": peak,
        "stages": [asdict(s) for s in stages],
        "missing_stage_modules": [s for s in STAGES if s not in {x.stage for x in stages}],
        "dvc_repro": repro,
    }
    out = REPO / "reports" / ("benchmarks-quick.json" if args.quick else "benchmarks.json")
    atomic.write_json(out, result)
    table = markdown_table(result)
    print(table)
    print(f"wrote {out.relative_to(REPO)}", file=sys.stderr)
    if not args.quick:
        update_page(PAGE, table)
        print(f"updated the benchmark table in {PAGE.relative_to(REPO)}", file=sys.stderr)
    print("== portable numerics on and off (benchmarks/numerics_cost.py)", file=sys.stderr)
    numerics_cost.main(["--quick"] if args.quick else [])
    print("== serving (benchmarks/serving.py): adds the serving key to that JSON", file=sys.stderr)
    result["serving"] = serving.main(["--quick"] if args.quick else [])
    return result


if __name__ == "__main__":
    main()
