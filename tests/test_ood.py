"""pipeline/serving/ood.py: off-distribution pictures are flagged with a reason; digits like the
training ones are not."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.serving.ood import FEATURES, OodReference, check, fit_reference, pixel_features
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


def test_float_rows_are_judged_as_the_uint8_images_they_came_from(reference: OodReference) -> None:
    """The service checks [N, S*S] float rows; predict checks the same rows made from pictures."""
    images, _ = synthetic_digits(50, seed=3)
    images = torch.cat([torch.from_numpy(images), torch.zeros(1, 28, 28, dtype=torch.uint8)])
    rows = images.flatten(1).float().div(255)
    from_rows, from_images = check(rows, reference), check(images, reference)
    assert [r.ood for r in from_rows] == [r.ood for r in from_images] and from_rows[-1].ood
    # float32 rows carry k/255 to 7 digits, so the scores agree to about 1e-6
    assert [r.score for r in from_rows] == pytest.approx([r.score for r in from_images], rel=1e-5)


def test_a_16x16_reference_has_a_frame_in_proportion_and_refuses_28x28_rows() -> None:
    from pipeline.data.loading import resize
    from pipeline.errors import PipelineError
    from pipeline.serving.ood import border_weights

    assert int((border_weights(28) > 0).sum()) == 28 * 28 - 22 * 22  # 3 pixels wide
    assert int((border_weights(16) > 0).sum()) == 16 * 16 - 12 * 12  # 2 pixels wide
    train, _ = synthetic_digits(300, seed=0)
    valid, _ = synthetic_digits(100, seed=1)
    small = fit_reference(resize(torch.from_numpy(train), 16), resize(torch.from_numpy(valid), 16))
    assert small.image_size == 16
    assert not any(r.ood for r in check(resize(torch.from_numpy(valid[:20]), 16), small)[:1])
    with pytest.raises(PipelineError, match="fitted on 16x16 images"):
        check(torch.from_numpy(valid[:2]), small)
