"""Is this run the main line, the only kind whose promote stage moves `@champion` by itself?

A DVC experiment is a trial: one person's `dvc exp run -S train.lr=0.01` against a shared
registry must not change what production serves. DVC sets DVC_EXP_BASELINE_REV (and DVC_EXP_NAME)
for every stage of an experiment, queued or not (dvc/repo/experiments/queue/base.py, DVC 3.x).
A plain `dvc repro` is the main line when HEAD is the tip of `promote.main_branch` (locally or
on origin, for CI's detached checkouts) and the tree was clean when the repro started. DVC
rewrites dvc.lock and the outputs git keeps between stages, so those are ignored, as is
data/upstream.json: scripts/retrain.sh refreshes that fingerprint of the data sources just before
its repro, and new upstream data is what a scheduled retrain is for. Any other change to a
tracked file (params.yaml, code, dvc.yaml) makes the run a trial. Untracked files are not judged
(as in tracking.run_name): code can only use one through a tracked file that then differs.

Outside a git checkout (`dvc init --no-scm`, an unpacked copy) there is no branch or commit to
judge, and `dvc exp` cannot run there (it needs git), so such a run counts as the main line, and
its reports/promotion.json says so. `promote.from_experiments: true` lets every run promote by
itself, as before this rule existed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.paths import UPSTREAM_FILE
from pipeline.registry import tracking

EXPERIMENT_ENV = "DVC_EXP_BASELINE_REV"  # dvc.env; DVC sets it in every experiment's stages
EXPERIMENT_NAME_ENV = "DVC_EXP_NAME"
MAX_LISTED = 5


@dataclass(frozen=True)
class Line:
    may_move: bool  # the promote stage may move the alias by itself
    reason: str


def judge(main_branch: str, from_experiments: bool, env: Mapping[str, str] | None = None) -> Line:
    """The verdict for the run in the current directory, with the reason in words."""
    line = _judge(main_branch, os.environ if env is None else env)
    if line.may_move or not from_experiments:
        return line
    return Line(True, f"{line.reason}; promote.from_experiments is true, so it promotes by itself")


def _judge(main_branch: str, env: Mapping[str, str]) -> Line:
    if env.get(EXPERIMENT_ENV):
        name = env.get(EXPERIMENT_NAME_ENV) or "unnamed"
        return Line(
            False,
            f"DVC experiment {name!r} (dvc exp run from commit {env[EXPERIMENT_ENV][:7]}), not "
            "the main line",
        )
    head = (tracking.git_output("rev-parse", "HEAD") or "").strip()
    if not head:
        return Line(
            True,
            "not a git checkout: no branch or commit to judge, and dvc exp needs git, so every "
            "run here is the main line",
        )
    tips = [
        (tracking.git_output("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") or "").strip()
        for ref in (f"refs/heads/{main_branch}", f"refs/remotes/origin/{main_branch}")
    ]
    if head not in tips:
        branch = (tracking.git_output("rev-parse", "--abbrev-ref", "HEAD") or "").strip()
        where = "a detached HEAD" if branch in ("HEAD", "") else f"branch {branch!r}"
        return Line(
            False,
            f"commit {head[:7]} ({where}) is not the tip of promote.main_branch {main_branch!r}",
        )
    dirty = tracking.changed_inputs((str(UPSTREAM_FILE),))
    if dirty:
        listed = ", ".join(dirty[:MAX_LISTED]) + (" ..." if len(dirty) > MAX_LISTED else "")
        return Line(
            False,
            f"{listed} {'differs' if len(dirty) == 1 else 'differ'} from commit {head[:7]} of "
            f"{main_branch!r}: an uncommitted trial",
        )
    return Line(True, f"clean commit {head[:7]} of {main_branch!r}")
