"""Portable numerics (pipeline/numerics.py): the same bytes whatever kernels the CPU offers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline import numerics

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "studies" / "kernel_ops.py"  # --child: trains, then prints weight and numpy hashes
STEPS = 32
HAS_AVX512 = "avx512f" in numerics.cpu_info()["cpu_flags"].split()
# What another CPU, or a user's shell, would choose: each library's kernel level forced.
ATEN = ["avx512", "avx2", "default"] if HAS_AVX512 else ["avx2", "default"]
MKL = [None, "COMPATIBLE"]
NUMPY = [None, "X86_V4 AVX512_ICL AVX512_SPR"]
LEGS = [
    {"ATEN_CPU_CAPABILITY": aten, "MKL_CBWR": mkl, "NPY_DISABLE_CPU_FEATURES": npy}
    for aten, mkl, npy in itertools.product(ATEN, MKL, NUMPY)
]


def fingerprint(leg: dict[str, str | None], portable: bool) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    env |= {name: value for name, value in leg.items() if value is not None}
    done = subprocess.run(
        [sys.executable, str(CHILD), "--child", "on" if portable else "off", str(STEPS)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    weights, arrays, _ = done.stdout.split()
    return weights, arrays


def fingerprints(portable: bool) -> list[tuple[str, str]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda leg: fingerprint(leg, portable), LEGS))


@pytest.mark.slow
def test_training_gives_the_same_bytes_under_every_kernel_level():
    """The CPU-switching test: forced ATen, MKL and numpy kernel levels stand for other CPUs.
    Off, the legs must differ (else they prove nothing); on, every byte must agree."""
    unpinned = fingerprints(portable=False)
    assert len({weights for weights, _ in unpinned}) > 1, "the legs did not change the kernels"
    pinned = fingerprints(portable=True)
    differing = [
        f"{leg}: {weights[:12]} {arrays[:12]}"
        for leg, (weights, arrays) in zip(LEGS, pinned, strict=True)
        if (weights, arrays) != pinned[0]
    ]
    assert differing == [], f"against {LEGS[0]}: {pinned[0]}"


def test_pin_overrides_an_inherited_setting_and_clears_contradicting_ones():
    environ = {"ATEN_CPU_CAPABILITY": "avx512", "NPY_ENABLE_CPU_FEATURES": "AVX512F", "HOME": "/x"}
    numerics.pin(True, environ)
    assert environ == {**numerics.PORTABLE_ENV, "HOME": "/x"}


def test_pin_off_leaves_the_environment_as_it_is():
    environ = {"ATEN_CPU_CAPABILITY": "avx512"}
    assert numerics.pin(False, environ) is False
    assert environ == {"ATEN_CPU_CAPABILITY": "avx512"}


def test_a_process_that_loaded_torch_must_restart_for_new_settings():
    import torch  # noqa: F401  (loaded, as it is in this test process)

    assert numerics.pin(True, {}) is True  # changed, with torch loaded: restart
    assert numerics.pin(True, dict(numerics.PORTABLE_ENV)) is False  # nothing to change


def test_a_stage_process_runs_with_the_pinned_kernels(tmp_path):
    """`python -m pipeline` pins before torch loads, over the shell's settings."""
    code = (
        "import sys; sys.argv = ['pipeline', 'predict', '--help'];"
        "import pipeline.__main__ as m; from pipeline.config import Params;"
        "m.pin_kernels(Params(), restart=True);"
        "import torch; print(torch.backends.cpu.get_cpu_capability())"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.stdout.strip() == "AVX2", done.stderr


def test_the_environment_record_names_cpu_and_libraries():
    record = numerics.environment()
    assert record["cpu_type"] and record["torch"] != "not installed"
    assert {"cpu_model", "cpu_flags", "numpy", "python"} <= set(record)
