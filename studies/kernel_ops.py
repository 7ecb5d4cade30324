"""Which torch ops give other bytes at other kernel levels: the study behind pipeline/numerics.py.

    python studies/kernel_ops.py            # a table of the ops that differ, per forced setting
    python studies/kernel_ops.py --child on|off STEPS [--ops]   # one run: its fingerprint

It trains 8 steps of the defaults (augmentation, MLP, loss, fused Adam, cosine schedule) on
synthetic digits, once per setting below, each in its own process, and hashes every ATen op's
output there (a TorchDispatchMode). An op is listed under a setting when its first differing
call differs there from the reference run. The settings force what another CPU would pick
(ATen's kernel level, MKL's code path) with portable numerics off, then the same with them on.
Only the first op to differ is a cause: every later op sees different inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "reference (this CPU's default)": {},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
}


def child(portable: bool, steps: int, hash_ops: bool) -> None:
    """Pin as `python -m pipeline` does, then train `steps` steps of the real trainer on synthetic
    digits. Prints every op's output hash (`hash_ops`, a JSON list of `name sha256-prefix`), else
    the sha256 of the weights and of numpy's own SIMD loops and BLAS on the same pixels (the
    fingerprint tests/test_numerics.py compares across kernel levels)."""
    from pipeline.__main__ import pin_kernels
    from pipeline.config import parse_params

    params = parse_params({"numerics": {"portable": portable}})
    pin_kernels(params, restart=True)
    import numpy as np
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from pipeline.learner.augment import Augmentation
    from pipeline.learner.model import MLP, Architecture
    from pipeline.learner.trainer import Split, Trainer

    calls: list[str] = []

    class Hashing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    flat = tensor.detach().reshape(-1).contiguous()
                    calls.append(f"{func.__name__} {sha256(flat.view(torch.uint8).numpy())[:16]}")
            return out

    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    n = steps * params.train.batch_size
    images = (torch.rand(n, 28, 28, generator=generator) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=generator)
    model = MLP(Architecture.from_params(params), 33.3, 78.5)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps_per_epoch=steps)
    with Hashing() if hash_ops else contextlib.nullcontext():
        trainer.train_epoch(Split(images, labels), 1)
    if hash_ops:
        print(json.dumps(calls))
        return
    weights = b"".join(t.numpy().tobytes() for t in model.state_dict().values())
    rows = images.flatten(1).numpy()[:500].astype(np.float32) / 255
    results = (rows @ rows.T, rows.sum(axis=0), np.exp(rows).mean(axis=1), rows.std(axis=0))
    arrays = b"".join(np.ascontiguousarray(r).tobytes() for r in results)
    print(sha256(weights), sha256(arrays), torch.backends.cpu.get_cpu_capability())


def sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def run_child(env: dict[str, str], portable: bool) -> list[str]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", "on" if portable else "off", "8", "--ops"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def first_differences(reference: list[str], other: list[str]) -> list[str]:
    """Op names whose output differs, in call order, each once; the first is the cause."""
    names: list[str] = []
    for mine, theirs in zip(reference, other, strict=False):
        name = mine.split()[0]
        if mine != theirs and name not in names:
            names.append(name)
    return names


def main() -> int:
    if sys.argv[1:2] == ["--child"]:  # --child on|off STEPS [--ops]
        child(sys.argv[2] == "on", int(sys.argv[3]), "--ops" in sys.argv[4:])
        return 0
    print("| forced setting | portable numerics | ops that differ (first = cause) |")
    print("| --- | --- | --- |")
    for portable in (False, True):
        reference = run_child({}, portable)
        for label, env in list(SETTINGS.items())[1:]:
            differing = first_differences(reference, run_child(env, portable))
            shown = ", ".join(differing[:6]) + (" ..." if len(differing) > 6 else "")
            print(f"| {label} | {'on' if portable else 'off'} | {shown or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
