"""`python -m pipeline <stage>`, `predict PATH...`, `monitor`, `upstream`, `gitref` and
`labelled add`: one subcommand each.

A stage loads params.yaml once, runs, and reports bad input as one `error:` line (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import Any

from pipeline import numerics
from pipeline.config import PARAMS_FILE, Params, load_params
from pipeline.errors import PipelineError
from pipeline.paths import MODEL_FILE

STAGES = (
    "download",
    "stats",
    "split",
    "validate",
    "train",
    "evaluate",
    "report",
    "promote",
    "committee",
)


# The commands that are not stages, and the modules whose main() runs them
COMMANDS = {
    "monitor": "pipeline.serving.monitor",
    "upstream": "pipeline.data.upstream",
    "gitref": "pipeline.registry.gitref",
}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Raising SystemExit runs the `finally` blocks that remove temp files.
    raise SystemExit(128 + signum)


def parser() -> argparse.ArgumentParser:
    """`--params` goes before or after the subcommand; predict accepts it but needs no params."""
    params = argparse.ArgumentParser(add_help=False)
    params.add_argument(
        "--params",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"params file (default: {PARAMS_FILE})",
    )
    main = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, parents=[params])
    commands = main.add_subparsers(
        dest="command", required=True, metavar="{stage,predict,monitor,upstream,gitref,labelled}"
    )
    stages = {
        stage: commands.add_parser(stage, parents=[params], help=f"run the {stage} stage")
        for stage in STAGES
    }
    stages["promote"].add_argument(
        "--allow-contract-change",
        action="store_true",
        help="let a version whose MLflow input/output signature differs from the champion's become "
        "champion (its clients must change too); the other gates still apply",
    )
    promoted = stages["promote"].add_mutually_exclusive_group()
    promoted.add_argument(
        "--committee",
        action="store_true",
        help="decide for the committee's version (committee/models/, committee/reports/), "
        "recorded in committee/reports/promotion.json",
    )
    promoted.add_argument(
        "--run",
        metavar="RUN_ID",
        default=argparse.SUPPRESS,
        help="promote this MLflow run's registered version (e.g. a DVC experiment's, which never "
        "moves the champion by itself) through the same gates, reading its evidence from MLflow",
    )
    stages["train"].add_argument(
        "--member",
        type=int,
        metavar="SEED",
        help="train the committee member of this seed into committee/members/SEED/ "
        "(committee/dvc.yaml) instead of the single model",
    )
    stages["evaluate"].add_argument(
        "--committee",
        action="store_true",
        help="score the committee (committee/models/model.pt) into committee/reports/",
    )
    stages["report"].add_argument(
        "--committee",
        action="store_true",
        help="report on the committee (committee/models/, committee/reports/) into "
        "committee/reports/",
    )
    commands.add_parser(
        "upstream",
        parents=[params],
        help="fingerprint a custom dataset's sources into data/upstream.json "
        "(pipeline/data/upstream.py)",
    )
    gitref = commands.add_parser(
        "gitref",
        parents=[params],
        help="commit the retrained working tree as a branch retrain/..., push it and tag the "
        "MLflow run with it (pipeline/registry/gitref.py)",
    )
    gitref.add_argument("--remote", required=True, help="the git remote to push to, e.g. origin")
    monitor = commands.add_parser(
        "monitor",
        parents=[params],
        help="judge a window of the records of what the models were asked against their "
        "references (pipeline/serving/monitor.py); exit 3 on drift",
    )
    monitor.add_argument(
        "--days",
        type=float,
        default=argparse.SUPPRESS,
        help="the window: records of the last DAYS days (default: monitor.days in params.yaml)",
    )
    monitor.add_argument(
        "--last", type=int, default=argparse.SUPPRESS, help="the window: the last N records"
    )
    labelled = commands.add_parser(
        "labelled",
        parents=[params],
        help="add new labelled batches as a new dataset version (pipeline/data/labelled.py)",
        description="Add each batch subfolder of FOLDER that data/labelled.json lacks. Exit 0 when "
        "a batch was added, 3 when there was nothing new, 1 on bad input (nothing written).",
    )
    labelled.add_argument("action", choices=["add"], help="add the inbox's new batches")
    labelled.add_argument(
        "folder",
        nargs="?",
        type=Path,
        help="the inbox: one subfolder per batch (default: $MNIST_LABELLED)",
    )
    predict = commands.add_parser(
        "predict",
        parents=[params],
        help="the digit in each picture or IDX image (pipeline/serving/predict.py)",
        description="Predict the digit in each image (PNG, JPEG, ...) or in each image of an "
        "IDX file.",
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="picture or IDX images file")
    predict.add_argument(
        "--model",
        default=str(MODEL_FILE),
        help="checkpoint file or MLflow URI such as models:/mnist-mlp@champion (default: "
        f"{MODEL_FILE})",
    )
    predict.add_argument(
        "--json", action="store_true", help="one JSON object per prediction per line (JSON Lines)"
    )
    return main


def pin_kernels(params: Params, restart: bool) -> None:
    """Portable numerics (pipeline/numerics.py) before torch or numpy computes anything; a process
    that already loaded either restarts under the pinned variables when `restart`."""
    if numerics.pin(params.numerics.portable) and restart:
        numerics.restart()


def run_stage(
    stage: str, params_file: Path, options: dict[str, Any] | None = None, restart: bool = False
) -> int:
    """`options` are the stage's own command-line flags, passed to its main() as keywords."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        params = load_params(params_file)
        pin_kernels(params, restart)
        module = COMMANDS.get(stage, f"pipeline.stages.{stage}")
        status = importlib.import_module(module).main(params, **(options or {}))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run the stage again to finish", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0  # monitor's verdict; stages return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    params_file = getattr(args, "params", PARAMS_FILE)
    if args.command == "predict":
        try:  # predict needs no params file; without one, numerics stay portable
            params = load_params(params_file) if params_file.exists() else Params()
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        pin_kernels(params, restart=argv is None)
        from pipeline.serving import predict  # torch and Pillow load only for this command

        return predict.run(args.paths, args.model, args.json)
    if args.command == "labelled":
        from pipeline.data import labelled  # numpy only; no params, no kernels to pin

        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # temp files go, the manifest stays
        try:
            return labelled.add(args.folder)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return labelled.FAILED
        except KeyboardInterrupt:
            print("error: interrupted; run labelled add again to finish", file=sys.stderr)
            return 130
    # A stage's own flags, given only when set, so each main() sees only the keywords it takes
    # (identity tests: --member 0 is set, though 0 == False).
    options = {
        name: value
        for name in (
            "allow_contract_change",
            "run",
            "member",
            "committee",
            "remote",
            "days",
            "last",
        )
        if (value := getattr(args, name, None)) is not None and value is not False
    }
    # Only a command-line process may restart itself; a caller in Python (a test) keeps its own.
    return run_stage(args.command, params_file, options, restart=argv is None)


if __name__ == "__main__":
    sys.exit(main())
