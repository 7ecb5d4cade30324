"""What the report's figures say and how they scale (pipeline/quality/plotting.py), read off the
Figures."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality import plotting


@pytest.mark.parametrize(
    ("units", "title"),
    [
        (5, "First-layer weights of the first 3 of 5 hidden units, as 2x2 images"),
        (3, "First-layer weights of all 3 hidden units, as 2x2 images"),
    ],
)
def test_weights_title_says_which_units_are_drawn(units: int, title: str) -> None:
    fig = plotting.first_layer_weights(np.ones((3, 4)), 2, units)
    assert fig.axes[0].get_title() == title


def test_normalised_confusion_shows_percent_and_scales_colours_to_the_errors() -> None:
    matrix = np.array([[995, 5, 0], [1, 990, 9], [0, 0, 1000]])
    fig = plotting.confusion(matrix, normalized=True)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["99.5", "0.5", "", "0.1", "99.0", "0.9", "", "", "100.0"]
    assert ax.images[0].norm.vmax == pytest.approx(0.9)  # the largest error, in percent


def test_robustness_axis_starts_near_the_lowest_accuracy() -> None:
    fig = plotting.robustness({"shift": 0.986, "rotate": 0.952}, clean=0.9862)
    assert fig.axes[0].get_xlim() == pytest.approx((0.9, 1.0))


def test_digits_are_drawn_white_on_black_as_the_model_reads_them() -> None:
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    labels = np.array([3, 5])
    grid = plotting.digit_grid(images, labels, "digits")
    errors = plotting.mistakes(images, labels, labels[::-1], np.ones(2), np.zeros(2))
    for fig in (grid, errors):
        assert {ax.images[0].get_cmap().name for ax in fig.axes if ax.images} == {"gray"}
