"""Deterministic perturbations of whole image batches, for robustness metrics and behaviour tests.

Each perturbation maps uint8 images [N, S, S] to uint8 images of the same shape with batched
tensor operations only, and gives the same result on every call (the noise uses a fixed seed),
so `robust_<name>_accuracy` in reports/metrics.json is reproducible and the behaviour tests in
tests/model/ measure exactly what evaluate reports. They act on the 28x28 MNIST-form pictures,
before any resize to the model's image size, so models of either size see the same change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Perturbation = Callable[[torch.Tensor], torch.Tensor]

# Compass directions as (rows down, columns right): "n" moves the digit up.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "n": (-1, 0),
    "ne": (-1, 1),
    "e": (0, 1),
    "se": (1, 1),
    "s": (1, 0),
    "sw": (1, -1),
    "w": (0, -1),
    "nw": (-1, -1),
}
SHIFT_PIXELS = (1, 2)
ROTATION_DEGREES = (10.0, 15.0)
NOISE_SIGMAS = (0.1, 0.2)  # in [0, 1] pixel units
NOISE_SEED = 20240  # fixed, so every evaluation adds the same noise to the same image


def shift(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Move the picture `rows` down and `cols` right; what enters at the edge is background (0)."""
    size = images.shape[-1]
    out = torch.zeros_like(images)
    src_r = slice(max(-rows, 0), size - max(rows, 0))
    dst_r = slice(max(rows, 0), size - max(-rows, 0))
    src_c = slice(max(-cols, 0), size - max(cols, 0))
    dst_c = slice(max(cols, 0), size - max(-cols, 0))
    out[:, dst_r, dst_c] = images[:, src_r, src_c]
    return out


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre, counter-clockwise as displayed for positive `degrees`; bilinear,
    0 fill."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # grid_sample maps each output position to the source position it reads (x right, y down).
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    n, size = images.shape[0], images.shape[-1]
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, 1, size, size], align_corners=False)
    out = F.grid_sample(
        images[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return _to_uint8(out[:, 0])


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int = NOISE_SEED) -> torch.Tensor:
    """Add N(0, sigma^2) noise per pixel (sigma in [0, 1] units), drawn from a generator seeded
    with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator) * (sigma * 255.0)
    return _to_uint8(images.float() + noise)


def dilate(images: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Grey dilation: each pixel becomes the maximum of its size x size neighbourhood (thicker
    strokes)."""
    return F.max_pool2d(images[:, None].float(), size, stride=1, padding=size // 2)[:, 0].to(
        torch.uint8
    )


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.round().clamp(0, 255).to(torch.uint8)


def _sigma_name(sigma: float) -> str:
    return f"{sigma:g}".replace(".", "_")


def perturbations() -> dict[str, Perturbation]:
    """Every perturbation evaluate reports, by the name in `robust_<name>_accuracy`."""
    table: dict[str, Perturbation] = {}
    for pixels in SHIFT_PIXELS:
        for direction, (dr, dc) in DIRECTIONS.items():
            table[f"shift_{pixels}px_{direction}"] = partial(
                shift, rows=dr * pixels, cols=dc * pixels
            )
    for degrees in ROTATION_DEGREES:
        table[f"rotate_ccw_{degrees:g}deg"] = partial(rotate, degrees=degrees)
        table[f"rotate_cw_{degrees:g}deg"] = partial(rotate, degrees=-degrees)
    for sigma in NOISE_SIGMAS:
        table[f"noise_sigma_{_sigma_name(sigma)}"] = partial(gaussian_noise, sigma=sigma)
    table["dilate_3x3"] = dilate
    return table
