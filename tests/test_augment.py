"""Batched augmentation: shapes, value range, per-image randomness, and the exact padded-crop
semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.learner.augment import (
    Augmentation,
    affine_matrices,
    augment,
    elastic_displacement,
    sampling_grid,
)
from tests.helpers import synthetic_digits


def images(count: int = 64, size: int = 28) -> torch.Tensor:
    return torch.from_numpy(synthetic_digits(count, seed=3, size=size)[0])


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ALL_ON = Augmentation(
    rotation_deg=10,
    crop_padding=2,
    scale=0.1,
    elastic_alpha=8,
    elastic_sigma=3,
    interpolation="bilinear",
)


@pytest.mark.parametrize("size", [28, 16])
@pytest.mark.parametrize("aug", [Augmentation(5, 2), ALL_ON], ids=["reference", "all-on"])
def test_keeps_shape_and_value_range_and_differs_per_image(size: int, aug: Augmentation) -> None:
    one = images(1, size)
    batch = one.expand(32, size, size).contiguous()  # the same picture 32 times
    out = augment(batch, aug, generator())
    assert out.shape == (32, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) > 16  # each image got its own draw (at 16 px a few small ones coincide)
    assert out.sum() > 0.5 * (one.float() / 255).sum() * 32  # mostly still there, not blanked


def test_rotation_zero_and_padding_zero_is_identity() -> None:
    batch = images()
    out = augment(batch, Augmentation(rotation_deg=0, crop_padding=0), generator())
    assert torch.equal(out, batch.float() / 255)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_shift_equals_a_random_crop_of_the_zero_padded_image(interpolation: str) -> None:
    batch, pad = images(200), 2
    aug = Augmentation(rotation_deg=0, crop_padding=pad, interpolation=interpolation)
    out = augment(batch, aug, generator(7))
    shifts = affine_matrices(200, 28, aug, generator(7))[1]  # same draws
    assert shifts.min() == -pad and shifts.max() == pad
    padded = F.pad(batch.float() / 255, (pad, pad, pad, pad))
    expected = torch.stack(
        [
            padded[i, pad + dy : pad + dy + 28, pad + dx : pad + dx + 28]
            for i, (dx, dy) in enumerate(shifts.tolist())
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotation_then_a_crop_of_the_zero_padded_rotated_image(interpolation: str) -> None:
    """The crop's padding stays 0 where rotation and zoom turn image pixels towards it: on white
    images and digits the batch equals an explicit rotate (fill 0), then pad and crop."""
    white = torch.full((100, 28, 28), 255, dtype=torch.uint8)
    batch, pad = torch.cat([white, images(100)]), 2
    aug = Augmentation(rotation_deg=10, crop_padding=pad, scale=0.1, interpolation=interpolation)
    out = augment(batch, aug, generator(3))
    theta, shifts = affine_matrices(200, 28, aug, generator(3))  # same draws
    turn = torch.cat([theta[:, :, :2], torch.zeros(200, 2, 1)], 2)  # rotation and zoom only
    rotated = F.grid_sample(
        batch[:, None].float() / 255,
        F.affine_grid(turn, [200, 1, 28, 28], align_corners=False),
        mode=interpolation,
        padding_mode="zeros",
        align_corners=False,
    )[:, 0]
    padded = F.pad(rotated, (pad, pad, pad, pad))
    expected = torch.stack(
        [
            padded[i, pad + dy : pad + dy + 28, pad + dx : pad + dx + 28]
            for i, (dx, dy) in enumerate(shifts.tolist())
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rotation_turns_the_picture_by_at_most_the_given_angle() -> None:
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 13:15, 2:26] = 255  # a horizontal bar through the centre
    out = augment(bar.expand(200, 28, 28).contiguous(), Augmentation(rotation_deg=20), generator(1))
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    angles = []
    for image in out:  # the bar's orientation from its second moments
        w = image / image.sum()
        cx, cy = (w * xs).sum(), (w * ys).sum()
        cov_xy = (w * (xs - cx) * (ys - cy)).sum()
        cov_xx, cov_yy = (w * (xs - cx) ** 2).sum(), (w * (ys - cy) ** 2).sum()
        angles.append(0.5 * math.degrees(math.atan2(2 * cov_xy, cov_xx - cov_yy)))
    angles = torch.tensor(angles).abs()
    assert angles.max() <= 21 and angles.max() > 15 and angles.min() < 5


def test_same_generator_state_gives_the_same_batch() -> None:
    batch = images()
    assert torch.equal(augment(batch, ALL_ON, generator(5)), augment(batch, ALL_ON, generator(5)))
    assert not torch.equal(
        augment(batch, ALL_ON, generator(5)), augment(batch, ALL_ON, generator(6))
    )


def test_sampling_grid_equals_affine_grid() -> None:
    theta, _ = affine_matrices(50, 16, ALL_ON, generator())
    expected = F.affine_grid(theta, [50, 1, 16, 16], align_corners=False)
    torch.testing.assert_close(sampling_grid(theta, 16), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("sigma", "size"), [(4.0, 28), (1.0, 16), (12.0, 28)])
def test_elastic_field_is_the_zero_padded_gaussian_convolution(sigma: float, size: int) -> None:
    """The blur done as two matrix products equals Simard's separable Gaussian convolution with
    zero padding (here conv2d), including a kernel wider than the image."""
    aug = Augmentation(elastic_alpha=size / 2, elastic_sigma=sigma)
    noise = torch.rand(20, 2, size, size, generator=generator(5)) * 2 - 1
    radius = min(math.ceil(3 * sigma), size - 1)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
    taps = (taps / taps.sum()).view(1, 1, 1, -1).expand(2, 1, 1, -1)
    blurred = F.conv2d(noise, taps, padding=(0, radius), groups=2)
    blurred = F.conv2d(blurred, taps.transpose(2, 3), padding=(radius, 0), groups=2)
    expected = blurred.permute(0, 2, 3, 1)  # alpha * 2 / size = 1: normalised units
    torch.testing.assert_close(
        elastic_displacement(20, size, aug, generator(5)), expected, atol=1e-6, rtol=0
    )


def test_elastic_field_is_smooth_and_scaled_by_alpha() -> None:
    aug = Augmentation(elastic_alpha=10, elastic_sigma=4)
    field = elastic_displacement(8, 28, aug, generator(2)) * 14  # in pixels
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert step < 0.2 * field.abs().mean()  # neighbours move together: smoothed, not white noise
    doubled = (
        elastic_displacement(8, 28, Augmentation(elastic_alpha=20, elastic_sigma=4), generator(2))
        * 14
    )
    torch.testing.assert_close(doubled, 2 * field)

    batch = images(16)
    weak = augment(batch, Augmentation(elastic_alpha=1, interpolation="bilinear"), generator(2))
    strong = augment(batch, Augmentation(elastic_alpha=30, interpolation="bilinear"), generator(2))
    pixels = batch.float() / 255
    assert (weak - pixels).abs().mean() < (strong - pixels).abs().mean()
