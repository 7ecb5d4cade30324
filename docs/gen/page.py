"""What every generator here does with its page: write it, or with --check fail when the
committed page is not what the generator makes now (tests/test_docs.py and CI rely on that)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import atomic

REPO = Path(__file__).resolve().parents[2]


def write_or_check(path: Path, text: str, check: bool, generator: str) -> int:
    """The exit status of `python docs/gen/<generator>.py [--check]`."""
    name = path.relative_to(REPO)
    if check:
        if not path.exists() or path.read_text() != text:
            script = Path(generator).resolve().relative_to(REPO)
            print(f"error: {name} is stale; run python {script}", file=sys.stderr)
            return 1
        return 0
    atomic.write_text(path, text)
    print(f"wrote {name}", file=sys.stderr)
    return 0
