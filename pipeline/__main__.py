"""`python -m pipeline <stage>`: load params.yaml once, run one stage, report errors as one line."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from pipeline.config import PARAMS_FILE, load_params
from pipeline.errors import PipelineError

STAGES = ("download", "stats", "split", "validate", "train", "evaluate", "report", "promote")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Raising SystemExit runs the `finally` blocks that remove temp files.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "predict":
        from pipeline import predict

        return predict.cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=STAGES + ("predict",))
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        params = load_params(type(PARAMS_FILE)(args.params))
        module = importlib.import_module(f"pipeline.{args.stage}")
        module.main(params)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run the stage again to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
