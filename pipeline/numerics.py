"""Portable numerics: the same commit gives the same model bytes on any x86-64 CPU.

ATen, MKL, oneDNN, numpy and OpenBLAS each pick their kernels by the CPU they run on, and a
wider vector unit sums in another order, so an AVX-512 Xeon and an AVX2 EPYC train different
weights from the same data. Each stage that computes a committed or registered result therefore
caps every library at one instruction set that all these CPUs have (AVX2, and MKL's
`COMPATIBLE` code path, the only one MKL keeps identical on Intel and AMD) before torch or numpy
loads: they read these variables once, when they load or first compute. `numerics.portable:
false` (params.yaml) opts out, for speed. docs/training.md, "Determinism", says what then holds.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path

# The pinned kernel levels, set over whatever the shell had: an inherited value must not change
# the result.
PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own kernels: element-wise ops, reductions, Adam
    "MKL_CBWR": "COMPATIBLE",  # MKL's GEMM (nn.Linear, affine_grid); AVX2 is ignored on AMD
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: no AVX-512, no AMX (bf16 autocast)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's own SIMD dispatch
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's and scipy's BLAS (PCA, t-SNE, statistics)
}
# Inherited settings that would override or contradict the pins: removed.
CLEARED_ENV = (
    "NPY_ENABLE_CPU_FEATURES",
    "DNNL_MAX_CPU_ISA",
    "MKL_DEBUG_CPU_TYPE",
    "OPENBLAS_L2_SIZE",
)
# Libraries that read the variables when they load: once one of them is in, the process restarts.
KERNEL_LIBRARIES = ("torch", "numpy")
# CPU flags that decide which kernels run: recorded with each result.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def wanted_env(portable: bool) -> dict[str, str | None]:
    """Variable -> value (None: unset) for this setting; nothing when portability is off."""
    if not portable:
        return {}
    return {**PORTABLE_ENV, **dict.fromkeys(CLEARED_ENV)}


_pinned: bool | None = None  # what pin() last set in this process


def pin(portable: bool, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set the kernel variables in `environ`. True when some changed while torch or numpy was
    already loaded: then only a new process (`restart`) runs with them."""
    global _pinned
    _pinned = portable
    changed = False
    for name, value in wanted_env(portable).items():
        if environ.get(name) == value:
            continue
        changed = True
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return changed and any(library in sys.modules for library in KERNEL_LIBRARIES)


def restart() -> None:
    """Replace this process with the same command under the pinned environment."""
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def cpu_info() -> dict[str, str]:
    """Model name, family/model numbers and kernel-relevant flags from /proc/cpuinfo (Linux)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break  # the first processor's block is enough
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_family": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "cpu_flags": " ".join(f for f in ISA_FLAGS if f in flags),
    }


def cpu_type() -> str:
    """What decides the kernels: model, family/model numbers and widest vector unit, e.g.
    `AMD EPYC 25/17 AVX-512`. The reproduction gate names the types it has been seen to hold on."""
    info = cpu_info()
    flags = set(info["cpu_flags"].split())
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no-AVX2"
    amx = " AMX" if "amx_tile" in flags else ""
    return f"{info['cpu_model']} {info['cpu_family']} {width}{amx}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _built_with(shown: str, marker: str, pattern: str) -> str:
    """A version from torch.__config__.show(): the MKL and oneDNN linked into torch."""
    line = next((line for line in shown.splitlines() if marker in line), "")
    found = re.search(pattern, line)
    return found.group(1) if found else "none"


def environment() -> dict[str, str]:
    """The machine and kernel libraries a result was computed with: recorded, never compared.
    In a process that pinned (a stage), also the setting and the ATen kernel level in use."""
    import torch  # loaded by every caller anyway; it knows the MKL and oneDNN built into it

    shown = torch.__config__.show()
    record = {
        "cpu_type": cpu_type(),
        **cpu_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "mkl": _built_with(shown, "Math Kernel Library", r"Version ([\w.]+)"),
        "onednn": _built_with(shown, "MKL-DNN", r"v([\d.]+)"),
    }
    if _pinned is not None:
        record["portable_numerics"] = str(_pinned).lower()
        record["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    return record
