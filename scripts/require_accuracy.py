"""Exit 1 when the test accuracy in reports/metrics.json is below a floor: CI fails on a bad model.

python scripts/require_accuracy.py 0.983 [reports/metrics.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    floor = float(argv[0])
    path = Path(argv[1] if len(argv) > 1 else "reports/metrics.json")
    accuracy = json.loads(path.read_text())["test_accuracy"]
    if accuracy < floor:
        print(
            f"test accuracy {accuracy:.4f} in {path} is below {floor}: the retrained model is "
            "worse than the defaults reach; see reports/train_history.csv and the params changed "
            "since the last commit"
        )
        return 1
    print(f"test accuracy {accuracy:.4f} in {path} (floor {floor})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
