"""The report's figures: each function takes plain arrays or tables and returns a matplotlib Figure.

Figures are built with the object API (no pyplot state), on the Agg backend, so the stage runs
headless and figures never leak between calls.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.data.datasets import CLASSES  # noqa: E402

DPI = 110
DIGIT_COLORS = matplotlib.colormaps["tab10"]
DIGIT_CMAP = "gray"  # pixel values as the model reads them: 0 black, full ink white, as in MNIST


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _grid_shape(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def digit_grid(images: np.ndarray, labels: np.ndarray, title: str, columns: int = 8) -> Figure:
    """Images [N, S, S] (uint8 or floats in [0, 1]), each titled with its label."""
    rows, columns = _grid_shape(len(images), columns)
    fig = Figure(figsize=(1.2 * columns, 1.35 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    vmax = 255 if images.dtype == np.uint8 else 1.0
    # The grid may have more cells than images: those stay blank.
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image, cmap=DIGIT_CMAP, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"label {label}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    return fig


def _integer_epochs(ax: Axes) -> None:
    """Ticks only at whole epochs on the x axis."""
    locator = ax.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator)  # matplotlib's default, AutoLocator, is one
    locator.set_params(integer=True)


def learning_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train vs valid, from train_history.csv."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = history["epoch"]
    for ax, column, name in [(loss_ax, "loss", "Loss"), (acc_ax, "acc", "Accuracy")]:
        ax.plot(
            epochs, history[f"train_{column}"], "o-", label="train (augmented, during the epoch)"
        )
        ax.plot(epochs, history[f"valid_{column}"], "s-", label="validation (after the epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.lower())
        ax.set_title(f"{name} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        _integer_epochs(ax)
    fig.suptitle("Learning curves", fontsize=12)
    return fig


def confusion(matrix: np.ndarray, normalized: bool) -> Figure:
    """Rows are true digits, columns predictions; normalised rows are percentages of the true
    digit's images (per-class recall on the diagonal).

    The colours end at the largest off-diagonal cell: on a scale up to the diagonal's ~99%, every
    error would look white. Zero cells stay blank so the errors stand out.
    """
    values = (
        matrix * 100 / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalized else matrix
    )
    errors = values[~np.eye(len(values), dtype=bool)]
    vmax = errors.max() or max(values.max(), 1)  # no errors: the diagonal's scale
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    unit = "% of the true digit's images" if normalized else "test images"
    fig.colorbar(
        image,
        ax=ax,
        label=f"{unit} (colours span the errors)",
        shrink=0.85,
        extend="max",
    )
    for (row, col), value in np.ndenumerate(values):
        text = "" if value == 0 else f"{value:.1f}" if normalized else f"{int(value)}"
        ax.text(
            col,
            row,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value > vmax / 2 else "black",
        )
    ticks = range(matrix.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    total = int(matrix.sum())
    kind = "% of each true digit" if normalized else "counts"
    ax.set_title(f"Confusion matrix ({kind}), {total:,} test images")
    return fig


def mistakes(
    images: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    p_predicted: np.ndarray,
    p_actual: np.ndarray,
) -> Figure:
    """The given misclassified images, each titled with both labels and both probabilities."""
    if len(images) == 0:
        fig = Figure(figsize=(6, 2), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "No misclassified test images.", ha="center", va="center", fontsize=12)
        fig.suptitle("Most confident mistakes", fontsize=12)
        return fig
    rows, columns = _grid_shape(len(images), 5)
    fig = Figure(figsize=(2.1 * columns, 2.3 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cells = zip(
        axes.flat, images, actual, predicted, p_predicted, p_actual, strict=False
    )  # spare cells blank
    for ax, image, true, pred, p_pred, p_true in cells:
        ax.imshow(image, cmap=DIGIT_CMAP, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(
            f"true {true}, predicted {pred}\np({pred})={p_pred:.2f}, p({true})={p_true:.2f}",
            fontsize=9,
        )
    fig.suptitle(f"The {len(images)} most confident mistakes on the test set", fontsize=12)
    return fig


def embedding_scatter(
    points: np.ndarray, labels: np.ndarray, title: str, xlabel: str, ylabel: str
) -> Figure:
    """2-D points coloured by digit, with a legend."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    size = 4 if len(points) > 2000 else 12
    for digit in CLASSES:
        chosen = labels == digit
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=size,
            alpha=0.6,
            color=DIGIT_COLORS(digit),
            label=str(digit),
            linewidths=0,
        )
    ax.legend(
        title="true digit",
        markerscale=12 / size * 1.5,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
    )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def mosaic(tiles: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """Tiles [N, S, S] laid out in one array, `gap` NaN pixels between them (drawn blank)."""
    rows, columns = _grid_shape(len(tiles), columns)
    size = tiles.shape[-1]
    padded = np.full((rows * columns, size + gap, size + gap), np.nan)
    padded[: len(tiles), :size, :size] = tiles
    grid = padded.reshape(rows, columns, size + gap, size + gap).transpose(0, 2, 1, 3)
    return grid.reshape(rows * (size + gap), columns * (size + gap))[:-gap, :-gap]


def first_layer_weights(
    weights: np.ndarray, image_size: int, units: int, columns: int = 10
) -> Figure:
    """Rows of the first Linear layer [shown, S*S] drawn as S x S images on one shared, zero-centred
    scale; `units` is the layer's width, of which the first `shown` are drawn.

    One image of all tiles (not one axes per unit) keeps this fast. The scale ends at the 99.5th
    percentile of |w|: a few large weights would otherwise wash out every tile.
    """
    tiles = mosaic(weights.reshape(-1, image_size, image_size), columns)
    limit = float(np.percentile(np.abs(weights), 99.5)) or 1.0
    fig = Figure(figsize=(10.5, 10.5 * tiles.shape[0] / tiles.shape[1] + 0.6), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    image = ax.imshow(
        tiles, cmap=cmap, norm=Normalize(vmin=-limit, vmax=limit), interpolation="nearest"
    )
    ax.axis("off")
    fig.colorbar(image, ax=ax, label="weight (red > 0 > blue)", shrink=0.6, extend="both")
    size = f"{image_size}x{image_size}"
    shown = f"all {units}" if len(weights) == units else f"the first {len(weights)} of {units}"
    ax.set_title(f"First-layer weights of {shown} hidden units, as {size} images", fontsize=12)
    return fig


def _accuracy_axis_start(lowest: float) -> float:
    """Where an accuracy axis starts: a round 0.05 below `lowest`, so that differences of a
    percent or two between bars stay visible (from 0 they would all look full)."""
    return max(0.0, math.floor((lowest - 0.02) * 20) / 20)


def per_class_accuracy(per_class: pd.DataFrame, overall: float) -> Figure:
    """Recall of each digit (the share of its test images classified correctly), with the overall
    accuracy."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    accuracy = per_class["recall"].to_numpy()
    bars = ax.bar(
        per_class["class"].astype(str),
        accuracy,
        color=[DIGIT_COLORS(int(c)) for c in per_class["class"]],
    )
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in accuracy], fontsize=8, padding=2)
    ax.axhline(overall, color="black", linestyle="--", linewidth=1)
    low = _accuracy_axis_start(min(accuracy.min(), overall))
    ax.set_ylim(low, 1.0 + (1.0 - low) * 0.08)
    ax.set_xlabel("digit")
    ax.set_ylabel("accuracy (recall)" + (f", axis from {low:.2f}" if low > 0 else ""))
    ax.set_title(f"Per-class test accuracy (dashed line: overall {overall:.4f})")
    return fig


def gradient_norms(norms: pd.DataFrame) -> Figure:
    """One line per Linear layer: mean L2 norm of its weight gradient in each epoch, log scale."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for layer in [c for c in norms.columns if c != "epoch"]:
        ax.plot(norms["epoch"], norms[layer], "o-", label=layer)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean L2 norm of the weight gradient")
    ax.set_title("Gradient norm per layer")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="layer")
    _integer_epochs(ax)
    return fig


def reliability_diagram(bins: list, ece: float) -> Figure:
    """Accuracy against mean confidence per confidence bin
    (pipeline.quality.calibration.ReliabilityBin), with counts.

    Bars on the diagonal are calibrated; below it, over-confident. The lower panel gives each
    bin's number of test images on a log scale: most predictions sit in the last bin.
    """
    fig = Figure(figsize=(8, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    filled = [b for b in bins if b.count]
    width = bins[0].high - bins[0].low
    centres = [(b.low + b.high) / 2 for b in filled]
    top.bar(
        centres,
        [b.accuracy for b in filled],
        width=width * 0.9,
        color="tab:blue",
        label="accuracy in the bin",
    )
    top.plot(
        [b.confidence for b in filled],
        [b.accuracy for b in filled],
        "o",
        color="tab:orange",
        label="(mean confidence, accuracy)",
    )
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.05)
    top.legend(loc="upper left")
    top.set_title(f"Reliability diagram, test set: ECE {ece:.4f} over {len(bins)} equal-width bins")
    counts = bottom.bar(centres, [b.count for b in filled], width=width * 0.9, color="tab:gray")
    bottom.bar_label(counts, labels=[f"{b.count:,}" for b in filled], fontsize=7, padding=1)
    bottom.set_yscale("log")
    bottom.set_ylabel("test images")
    bottom.set_xlabel("confidence of the predicted digit")
    bottom.set_xlim(0, 1)
    return fig


def robustness(accuracies: dict[str, float], clean: float) -> Figure:
    """Test accuracy under each perturbation (name -> accuracy), against the clean accuracy."""
    names = list(accuracies)
    fig = Figure(figsize=(9, 0.32 * len(names) + 1.5), layout="constrained")
    ax = fig.subplots()
    colors = [
        "tab:blue"
        if n.startswith("shift")
        else "tab:green"
        if n.startswith("rotate")
        else "tab:purple"
        if n.startswith("noise")
        else "tab:red"
        for n in names
    ]
    bars = ax.barh(names, [accuracies[n] for n in names], color=colors)
    # Inside the bars, in white: beside their ends the labels would sit on the dashed line.
    ax.bar_label(
        bars,
        labels=[f"{accuracies[n]:.3f}" for n in names],
        label_type="center",
        fontsize=8,
        color="white",
    )
    ax.axvline(clean, color="black", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    low = _accuracy_axis_start(min(*accuracies.values(), clean))
    ax.set_xlim(low, 1.0)
    ax.set_xlabel("test accuracy" + (f", axis from {low:.2f}" if low > 0 else ""))
    ax.set_title(
        f"Accuracy under deterministic perturbations (dashed line: unperturbed {clean:.4f})"
    )
    return fig


def off_distribution(images: np.ndarray, titles: list[str], flagged: list[bool]) -> Figure:
    """Non-digit inputs, each titled with the model's answer and whether predict flags it."""
    rows, columns = _grid_shape(len(images), 4)
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, flag in zip(
        axes.flat, images, titles, flagged, strict=False
    ):  # spare cells blank
        # Pixel values as they are (0 black, 255 white), framed, so "black" and "white" look it.
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(image, cmap=DIGIT_CMAP, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(
            title + ("\nflagged off-distribution" if flag else "\nnot flagged"),
            fontsize=9,
            color="black" if flag else "tab:red",
        )
    fig.suptitle(
        "The model's answer (confidence) to pictures that are not digits; MNIST digits are "
        "white on black",
        fontsize=12,
    )
    return fig
