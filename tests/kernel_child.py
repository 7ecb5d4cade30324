"""Child process of tests/test_numerics.py: train a few steps and print a fingerprint.

Run as `python tests/kernel_child.py on|off`: it pins the kernels exactly as `python -m pipeline`
does (numerics.portable on or off), then runs the real trainer (augmentation, MLP, fused Adam,
cosine schedule) for 32 steps on synthetic digits, plus numpy's own SIMD loops and BLAS. It
prints the sha256 of the weights and of the numpy results.
"""

from __future__ import annotations

import hashlib
import sys

from pipeline.__main__ import pin_kernels
from pipeline.config import parse_params

params = parse_params({"numerics": {"portable": sys.argv[1] == "on"}})
pin_kernels(params, restart=True)

import numpy as np  # noqa: E402  (after the pinning, as in a stage)
import torch  # noqa: E402

from pipeline.augment import Augmentation  # noqa: E402
from pipeline.model import MLP, Architecture  # noqa: E402
from pipeline.trainer import Split, Trainer  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
generator = torch.Generator().manual_seed(1)
n = 32 * params.train.batch_size
images = (torch.rand(n, 28, 28, generator=generator) * 255).to(torch.uint8)
labels = torch.randint(0, 10, (n,), generator=generator)
model = MLP(Architecture.from_params(params), 33.3, 78.5)
trainer = Trainer(model, params.train, Augmentation.from_params(params), steps_per_epoch=32)
trainer.train_epoch(Split(images, labels), 1)
weights = hashlib.sha256()
for tensor in model.state_dict().values():
    weights.update(tensor.numpy().tobytes())

rows = images.flatten(1).numpy()[:500].astype(np.float32) / 255
arrays = hashlib.sha256()
for result in (rows @ rows.T, rows.sum(axis=0), np.exp(rows).mean(axis=1), rows.std(axis=0)):
    arrays.update(np.ascontiguousarray(result).tobytes())
print(weights.hexdigest(), arrays.hexdigest(), torch.backends.cpu.get_cpu_capability())
