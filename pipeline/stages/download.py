"""Stage `download`: fetch the four IDX files to data/raw/, verified, from the first working mirror
(pipeline/data/fetch.py), and record their checksums in data/raw/checksums.json."""

from __future__ import annotations

import os

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data.fetch import download
from pipeline.paths import RAW_DIR


def main(params: Params) -> None:
    download(params, RAW_DIR, dict(os.environ), artifacts.read_upstream())
