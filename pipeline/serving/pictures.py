"""A picture file (PNG, JPEG, anything Pillow reads) -> a uint8 28x28 digit in MNIST's form.

predict and the served model (pipeline/serving/service.py) both read pictures through `to_mnist`, so
the same file gets the same pixels either way: grayscale, a bright digit on a dark ground (a light
background is inverted), and, unless the picture is already 28x28 like an MNIST image, the digit
cropped to its bounding box, scaled into a 20x20 box and centred by its centre of mass in a 28x28
frame, as MNIST itself was made.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from pipeline.data.loading import resize
from pipeline.errors import PipelineError

MNIST_SIZE = 28
MNIST_BOX = 20
# Pixels above this share of the digit's brightness range count as ink for the bounding box;
# lower values let paper grain and JPEG noise widen the box.
INK_THRESHOLD = 0.3
# A picture whose brightest ink is within this many grey levels of its background holds no digit.
MIN_CONTRAST = 24


def border_median(image: np.ndarray) -> float:
    """The median grey level of the picture's edge pixels: np.median's value, without its Python
    layers, which cost more than the rest of framing a 28x28 picture (the service frames every
    picture of a request)."""
    edge = np.sort(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]))
    middle = len(edge) // 2
    return float(edge[middle] if len(edge) % 2 else (edge[middle - 1] + edge[middle]) / 2)


def decode_picture(data: bytes) -> np.ndarray:
    """Any Pillow-readable picture -> float grey levels 0..255 [H, W], upright as its EXIF
    orientation says; transparency shows white paper."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:  # closing it frees its pixels: read them inside
        ImageOps.exif_transpose(image, in_place=True)  # a copy of each picture costs as much
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit and float greys: scale by the format's range, which convert("L") would clip.
            grey = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I") else max(float(grey.max()), 1.0)
            return np.clip(grey / top * 255.0, 0, 255)
        transparent = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        )
        if transparent:
            rgba = image.convert("RGBA")
            paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(paper, rgba).convert("L"), dtype=np.float64)
        return np.asarray(image.convert("L"), dtype=np.float64)


def mnist_polarity(grey: np.ndarray) -> np.ndarray:
    """Bright digit on dark ground: a picture whose border is mostly light is inverted."""
    return 255.0 - grey if border_median(grey) > 127.5 else grey


def fit_digit(ink: np.ndarray) -> np.ndarray:
    """Crop to the digit, scale it into 20x20 keeping aspect, centre its mass in 28x28 (uint8)."""
    background = border_median(ink)
    peak = float(ink.max())
    if peak - background < MIN_CONTRAST:
        raise PipelineError(
            "no digit found (the picture is blank or has almost no contrast); crop it to one digit"
        )
    stretched = np.clip((ink - background) / (peak - background), 0.0, 1.0) * 255.0
    rows, cols = np.nonzero(stretched >= INK_THRESHOLD * 255.0)
    crop = stretched[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    box = resize(torch.from_numpy(square.round().astype(np.uint8))[None], MNIST_BOX)[0].numpy()
    weights = box.astype(np.float64)
    grid = np.arange(MNIST_BOX)
    centre_row = (weights.sum(1) @ grid) / weights.sum()
    centre_col = (weights.sum(0) @ grid) / weights.sum()
    frame = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    slack = MNIST_SIZE - MNIST_BOX
    row = int(np.clip(round((MNIST_SIZE - 1) / 2 - centre_row), 0, slack))
    col = int(np.clip(round((MNIST_SIZE - 1) / 2 - centre_col), 0, slack))
    frame[row : row + MNIST_BOX, col : col + MNIST_BOX] = box
    return frame


def picture_to_mnist(grey: np.ndarray) -> np.ndarray:
    """Grey levels [H, W] -> uint8 28x28 in MNIST form; a 28x28 picture counts as already framed."""
    ink = mnist_polarity(grey)
    if ink.shape == (MNIST_SIZE, MNIST_SIZE):
        return np.clip(ink.round(), 0, 255).astype(np.uint8)
    return fit_digit(ink)


def to_mnist(data: bytes) -> np.ndarray:
    """A picture file's bytes -> uint8 [28, 28]; one-line PipelineError for what is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        grey = decode_picture(data)
    except UnidentifiedImageError:
        raise PipelineError(
            "not a picture Pillow can read; use a PNG or JPEG of one digit"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(
            f"damaged or unsupported picture ({exc}); re-export it as PNG"
        ) from None
    return picture_to_mnist(grey)
