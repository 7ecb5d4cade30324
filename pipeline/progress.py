"""Progress bars on a terminal, silence elsewhere: CI logs get the stages' one-line summaries."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    """A terminal, and not a second process of a torchrun job (those would draw over rank 0's
    bars)."""
    return sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"


def bar(**kwargs: Any) -> tqdm:
    return tqdm(disable=not interactive(), dynamic_ncols=True, **kwargs)


def log(message: str) -> None:
    """One line to stderr that does not break an active progress bar."""
    tqdm.write(message, file=sys.stderr)
