"""benchmarks/run.py: the arithmetic and bookkeeping behind its numbers (timings need real runs)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import parse_params
from pipeline.learner.model import Architecture

ROOT = Path(__file__).resolve().parent.parent


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run = _load_run()
ARCH = Architecture(28, (250, 100))


def test_epoch_flops_is_three_forward_passes():
    forward_per_image = 2 * (784 * 250 + 250 * 100 + 100 * 10)
    assert run.epoch_flops(54_000, ARCH) == 3 * forward_per_image * 54_000


def test_step_operands_are_what_autograd_multiplies():
    operands = run.step_operands(64, ARCH)
    assert len(operands) == 8  # forward and weight gradient for 3 layers, input gradient for 2
    assert all(a.shape[1] == b.shape[0] for a, b in operands)
    assert run.matmul_flops(operands) == run.training_flops(64, ARCH)
    assert run.training_flops(64, ARCH) == run.epoch_flops(64, ARCH) - 2 * 64 * 784 * 250
    shapes = {(tuple(a.shape), tuple(b.shape)) for a, b in operands}
    assert ((64, 784), (784, 250)) in shapes  # x @ W^T
    assert ((250, 64), (64, 784)) in shapes  # g^T @ x: first layer's weight gradient
    assert ((64, 250), (250, 784)) not in shapes  # no gradient for the pixels


def test_hardware_limit_is_flops_over_measured_speed():
    limits = run.hardware_limit([64], ARCH, 54_000, min_seconds=0.01, repeats=1)
    entry = limits[64]
    assert entry["gflops"] > 0
    assert entry["limit_epoch_seconds"] == pytest.approx(
        run.training_flops(54_000, ARCH) / (entry["gflops"] * 1e9)
    )


def test_seconds_to_accuracy_counts_until_the_first_epoch_at_target():
    history = [
        {"epoch": 1, "seconds": 2.0, "valid_acc": 0.95},
        {"epoch": 2, "seconds": 3.0, "valid_acc": 0.981},
        {"epoch": 3, "seconds": 4.0, "valid_acc": 0.99},
    ]
    assert run.seconds_to_accuracy(history, 0.98) == (5.0, 2)
    assert run.seconds_to_accuracy(history, 0.995) == (None, None)


def test_epoch_times_come_from_last_pt(tmp_path: Path):
    """reports/train_history.csv holds no wall time (dvc.lock hashes it); last.pt keeps it."""
    from pipeline.learner import resume
    from pipeline.paths import LAST_CHECKPOINT_FILE

    rows = [{"epoch": 1, "seconds": 2.5, "valid_acc": 0.97}, {"epoch": 2, "seconds": 1.5}]
    resume.save_state(tmp_path / LAST_CHECKPOINT_FILE, resume.TrainState("abc", history=rows))
    assert run.read_history(tmp_path) == [
        {"epoch": 1.0, "seconds": 2.5, "valid_acc": 0.97},
        {"epoch": 2.0, "seconds": 1.5},
    ]


def test_pick_best_takes_the_fastest_run_that_reaches_98_percent():
    runs = [
        {"batch_size": 64, "test_accuracy": 0.982, "epoch_seconds": 5.0},
        {"batch_size": 256, "test_accuracy": 0.981, "epoch_seconds": 2.0},
        {"batch_size": 1024, "test_accuracy": 0.975, "epoch_seconds": 1.0},
    ]
    assert run.pick_best(runs)["batch_size"] == 256
    assert run.pick_best([runs[2]]) is None


def test_batch_lr_scales_with_the_square_root():
    assert run.batch_lr(64, 0.001) == pytest.approx(0.001)
    assert run.batch_lr(256, 0.001) == pytest.approx(0.002)


def test_with_overrides_keeps_other_keys_and_validates():
    params = run.with_overrides(
        parse_params({"train": {"epochs": 3}}), {"train": {"batch_size": 128}}
    )
    assert (params.train.epochs, params.train.batch_size) == (3, 128)
    with pytest.raises(Exception, match="train.batch_size"):
        run.with_overrides(params, {"train": {"batch_size": 0}})


def test_update_page_replaces_only_the_marked_block(tmp_path: Path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# x\n\nbefore\n{run.TABLE_START}\nold table\n{run.TABLE_END}\nafter\n")
    run.update_page(page, "| new |")
    assert (
        page.read_text() == f"# x\n\nbefore\n{run.TABLE_START}\n| new |\n{run.TABLE_END}\nafter\n"
    )
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        run.update_page(page, "| new |")


def test_the_benchmarks_page_holds_the_markers_the_table_goes_between():
    text = run.PAGE.read_text()
    assert run.PAGE == ROOT / "docs" / "benchmarks.md"
    assert text.count(run.TABLE_START) == 1 and text.count(run.TABLE_END) == 1
    assert text.index(run.TABLE_START) < text.index(run.TABLE_END)


def test_scratch_copy_takes_tracked_and_untracked_but_not_ignored_files(tmp_path: Path):
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=source, check=True)
    (source / ".gitignore").write_text("/data/\n")
    (source / "tracked.py").write_text("a")
    (source / "data").mkdir()
    (source / "data" / "big.bin").write_text("ignored")
    (source / "pkg").mkdir()
    (source / "pkg" / "new.py").write_text("untracked")
    subprocess.run(["git", "add", "tracked.py", ".gitignore"], cwd=source, check=True)
    run.scratch_copy(source, target)
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [".gitignore", "pkg/new.py", "tracked.py"]


def test_run_measured_reports_the_child_peak_rss_not_ours(tmp_path: Path):
    """The launcher keeps this process's memory (torch loaded) out of the child's peak."""
    hold = "x = bytearray(200 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])"
    seconds, rss_mb, code, error = run.run_measured([sys.executable, "-c", hold], tmp_path, {})
    small = run.run_measured([sys.executable, "-c", "pass"], tmp_path, {})[1]
    assert code == 0 and error == "" and seconds > 0
    assert 200 <= rss_mb < 400
    assert small < 100


def test_run_measured_reports_the_last_error_line(tmp_path: Path):
    _, _, code, error = run.run_measured(
        [
            sys.executable,
            "-c",
            "import sys; print('noise', file=sys.stderr); sys.exit('error: bad input')",
        ],
        tmp_path,
        {},
    )
    assert code == 1 and error == "error: bad input"


def test_epoch_breakdown_times_every_part_and_leaves_training_unchanged():
    import torch

    from pipeline.learner.trainer import Split
    from tests.helpers import synthetic_digits

    x, y = synthetic_digits(300, seed=3)
    data = Split(torch.from_numpy(x), torch.from_numpy(y).long())
    params = parse_params({"model": {"hidden": [32]}, "train": {"epochs": 1}})
    backward = torch.Tensor.backward
    parts = run.epoch_breakdown(data, params, 0.2, 0.3)
    assert torch.Tensor.backward is backward  # the timers are gone again
    assert all(parts[p] > 0 for p in (*run.PHASES, "total"))
    assert sum(parts[p] for p in (*run.PHASES, "other")) == pytest.approx(parts["total"])
    table = run.breakdown_table(
        {"images": 300, "breakdown_seconds": {"reference": parts, "ours": parts}}
    )
    assert len(table) == 2 + len(run.PHASES) + 2 and table[-1].startswith("| total |")


def test_cpu_info_names_the_model_and_its_flags():
    info = run.cpu_info()
    assert info["model"] and info["torch_cpu_capability"]
    if Path("/proc/cpuinfo").exists():
        assert "sse2" in info["flags"] or "fp" in info["flags"]  # x86 or arm


def test_peak_gemm_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    peak = run.peak_gemm(2, 128, min_seconds=0.01, repeats=1)
    assert peak["gflops"] > 0 and peak["threads"] == 2 and torch.get_num_threads() == before


def test_startup_seconds_times_the_imports_of_a_stage():
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, cpu = run.startup_seconds(ROOT, "split", env, repeats=1)
    assert cpu > 0 and 0 < wall < 60
    assert run.source_commit().split("+")[0]


def test_numerics_cost_times_the_best_preset_as_the_makefile_runs_it():
    import numerics_cost

    preset = numerics_cost.preset_overrides()
    assert preset["train"]["batch_size"] == 256 and preset["model"]["hidden"] == [1024] * 3
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert numerics_cost.TABLE_START in page and numerics_cost.TABLE_END in page


def test_the_serving_table_on_the_page_is_the_one_its_json_gives():
    """docs/benchmarks.md quotes reports/benchmarks-serving.json, which benchmarks/serving.py
    wrote with the table: the page cannot drift from its source."""
    import serving

    result = json.loads((ROOT / "reports" / "benchmarks-serving.json").read_text())
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = page.split(serving.TABLE_START)[1].split(serving.TABLE_END)[0]
    assert block.strip() == serving.markdown_table(result).strip()
    assert set(result["rows"]) == set(serving.request_bodies(np.zeros((256, 28, 28), np.uint8)))
    for row in result["rows"].values():
        assert set(row) >= {"limit", "ours_in_process", "floor", "champion"}
    assert result["load_test"]["failures"] == 0 and result["load_test"]["requests"] > 0


def test_serving_request_bodies_are_what_clients_send():
    import base64

    import serving
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28), dtype=np.uint8)
    bodies = serving.request_bodies(images)
    assert {kind: len(body["inputs"]) for kind, body in bodies.items()} == {
        "1 image": 1,
        "256 images": 256,
        "1 image, packed": 1,
        "256 images, packed": 256,
        "1 picture": 1,
        "32 pictures": 32,
    }
    assert max(max(row) for row in bodies["256 images"]["inputs"]) <= 1.0
    packed = bodies["256 images, packed"]
    assert packed["params"] == {"packed": "uint8"}
    assert base64.b64decode(packed["inputs"][3]) == images[3].tobytes()
    picture = Image.open(io.BytesIO(base64.b64decode(bodies["1 picture"]["inputs"][0])))
    assert np.array_equal(np.asarray(picture), images[0])
