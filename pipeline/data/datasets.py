"""Known datasets in MNIST's IDX layout: canonical file names, official checksums, sizes, mirrors.

The MD5s are the ones torchvision verifies; SHA-256s are given where they are published. The
image counts are each dataset's published training and test sizes: validate checks the data
against them, not against what it happens to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
CLASSES = tuple(range(10))  # every dataset in MNIST's IDX layout has ten classes, 0-9
NUM_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class DatasetSpec:
    mirrors: tuple[str, ...]
    md5: dict[str, str]
    train_rows: int
    test_rows: int
    sha256: dict[str, str] = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
            TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
            TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
        },
        train_rows=60_000,
        test_rows=10_000,
        sha256={
            TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": DatasetSpec(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
            TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
            TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
        },
        train_rows=60_000,
        test_rows=10_000,
    ),
    "kmnist": DatasetSpec(
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        md5={
            TRAIN_IMAGES: "bdb82020997e1d708af4cf47b453dcf7",
            TRAIN_LABELS: "e144d726b3acfaa3e44228e80efcd344",
            TEST_IMAGES: "5c965bf0a639b31b8f53240b1b52f4d7",
            TEST_LABELS: "7320c461ea6c1c855c0b718fb2a4b134",
        },
        train_rows=60_000,
        test_rows=10_000,
    ),
}
