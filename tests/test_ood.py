"""pipeline/ood.py: off-distribution pictures are flagged with a reason; digits like the training
ones are not."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.ood import FEATURES, OodReference, check, fit_reference, pixel_features
from tests.helpers import synthetic_digits


@pytest.fixture(scope="module")
def reference() -> OodReference:
    train, _ = synthetic_digits(600, seed=0)
    valid, _ = synthetic_digits(200, seed=1)
    return fit_reference(torch.from_numpy(train), torch.from_numpy(valid))


def test_the_threshold_is_the_validation_quantile(reference: OodReference) -> None:
    valid, _ = synthetic_digits(200, seed=1)
    flagged = [r.ood for r in check(torch.from_numpy(valid), reference)]
    assert sum(flagged) <= 1  # 0.1% of 200 rounds to at most one image above the 99.9% quantile
    assert reference.quantile == 0.999 and reference.threshold > 0
    assert OodReference.from_dict(reference.to_dict()) == reference


def test_fresh_digits_pass_and_odd_pictures_are_flagged_with_the_statistic_that_is_off(
    reference: OodReference,
) -> None:
    fresh, _ = synthetic_digits(100, seed=7)
    assert sum(r.ood for r in check(torch.from_numpy(fresh), reference)) <= 2
    noise = torch.randint(
        0, 256, (5, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    black = torch.zeros(1, 28, 28, dtype=torch.uint8)
    white = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    results = check(torch.cat([noise, black, white]), reference)
    assert all(r.ood and r.score > reference.threshold for r in results)
    assert "below the training digits'" in results[5].reason  # black: too dark
    assert "above the training digits'" in results[6].reason  # white: too bright
    assert "quantile on the validation split" in results[0].reason
    assert results[0].reason.split()[0] in {f.replace("_", "-") for f in FEATURES}


def test_features_of_known_pictures() -> None:
    white = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    half = torch.full((1, 28, 28), 128, dtype=torch.uint8)
    brightness, ink, mid_grey, border = pixel_features(torch.cat([white, half])).T
    assert brightness.tolist() == pytest.approx([math.log(1.001), math.log(128 / 255 + 0.001)])
    assert ink.tolist() == pytest.approx(
        [math.log(1.001), math.log(1.001)]
    )  # 128/255 is above half
    assert mid_grey.tolist() == [0.0, 1.0] and border.tolist() == pytest.approx([1.0, 128 / 255])
