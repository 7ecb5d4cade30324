"""pipeline/quality/perturb.py: each perturbation does what its name says, batched and
deterministically."""

from __future__ import annotations

import pytest
import torch

from pipeline.quality import perturb


def dot_image(row: int, col: int, size: int = 28) -> torch.Tensor:
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    image[0, row, col] = 255
    return image


def bright_pixels(images: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in (images[0] > 127).nonzero().tolist()}


def test_the_table_holds_every_perturbation_of_the_issue() -> None:
    names = set(perturb.perturbations())
    shifts = {
        f"shift_{p}px_{d}" for p in (1, 2) for d in ("n", "ne", "e", "se", "s", "sw", "w", "nw")
    }
    assert shifts <= names
    assert {"rotate_ccw_10deg", "rotate_cw_10deg", "rotate_ccw_15deg", "rotate_cw_15deg"} <= names
    assert {"noise_sigma_0_1", "noise_sigma_0_2", "dilate_3x3"} <= names
    assert len(names) == 16 + 4 + 2 + 1


@pytest.mark.parametrize(
    ("name", "moved"),
    [
        ("shift_1px_n", (9, 14)),
        ("shift_1px_se", (11, 15)),
        ("shift_2px_w", (10, 12)),
        ("shift_2px_ne", (8, 16)),
    ],
)
def test_shifts_move_every_pixel_by_whole_pixels(name: str, moved: tuple[int, int]) -> None:
    out = perturb.perturbations()[name](dot_image(10, 14))
    assert out.dtype == torch.uint8 and bright_pixels(out) == {moved}
    assert int(out.sum()) == 255  # copied, not interpolated


def test_a_shift_fills_with_background_at_the_edge() -> None:
    full = torch.full((2, 28, 28), 200, dtype=torch.uint8)
    out = perturb.shift(full, 2, -1)
    assert (
        (out[:, :2] == 0).all() and (out[:, :, -1:] == 0).all() and (out[:, 2:, :-1] == 200).all()
    )


def test_rotation_turns_counter_clockwise_as_displayed() -> None:
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 2:6, 12:16] = 255  # a block above the centre
    out = perturb.rotate(image, 90.0)
    rows, cols = (out[0] > 127).nonzero(as_tuple=True)
    assert cols.float().mean() < 8 and abs(rows.float().mean() - 13.5) < 1  # now left of the centre
    assert perturb.perturbations()["rotate_cw_10deg"](image).equal(perturb.rotate(image, -10.0))


def test_noise_is_deterministic_and_has_the_named_sigma() -> None:
    grey = torch.full((64, 28, 28), 128, dtype=torch.uint8)
    noisy = perturb.perturbations()["noise_sigma_0_1"](grey)
    assert noisy.equal(perturb.perturbations()["noise_sigma_0_1"](grey))
    assert (noisy.float() - 128).std().item() / 255 == pytest.approx(0.1, rel=0.02)
    assert (perturb.gaussian_noise(grey, 0.2).float() - 128).std().item() / 255 == pytest.approx(
        0.2, rel=0.02
    )


def test_dilation_grows_a_dot_into_its_3x3_neighbourhood() -> None:
    out = perturb.dilate(dot_image(5, 5))
    assert bright_pixels(out) == {(r, c) for r in (4, 5, 6) for c in (4, 5, 6)}
