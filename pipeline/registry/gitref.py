"""`python -m pipeline gitref --remote origin`: record a retrain as a git branch.

One commit on top of HEAD holds the working tree as trained (dvc.lock, params.yaml,
data/upstream.json and the reports git keeps), on a branch `retrain/<UTC time>-<run id>` pushed to
the remote; the MLflow run gets the tags git.ref and git.commit. So for any champion,
`git fetch origin <git.ref> && git checkout FETCH_HEAD && dvc pull` restores its data and model.

A branch rather than `dvc exp push`: a plain clone and `git fetch` get branches (refs/exps need
`dvc exp pull`), a branch can become a pull request, and the retrain stays a `dvc repro` of the
default branch, the one kind of run that moves the champion by default. scripts/retrain.sh runs
this after `dvc push`, so the remote already has the data the pushed commit points at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pipeline import artifacts
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.paths import MLFLOW_RUN_FILE
from pipeline.progress import log
from pipeline.registry import tracking

REF_PREFIX = "retrain/"
REF_TAG = "git.ref"
COMMIT_TAG = "git.commit"
GIT_TIMEOUT_S = 300


def git(*args: str, env: dict[str, str] | None = None) -> str:
    """A git command's stripped output; its failure as a PipelineError with git's first line."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipelineError(f"git {args[0]} failed ({exc})") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise PipelineError(f"git {args[0]} failed ({lines[0] if lines else done.returncode})")
    return done.stdout.strip()


def dvc_remote_configured() -> bool:
    """Whether `dvc remote list` names any remote: without one the pushed branch would point at
    data that nobody can `dvc pull`."""
    try:
        done = subprocess.run(
            ["dvc", "remote", "list"], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipelineError(f"dvc remote list failed ({exc})") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise PipelineError(f"dvc remote list failed ({lines[0] if lines else done.returncode})")
    return bool(done.stdout.strip())


def branch_name(run_id: str, now: datetime) -> str:
    """retrain/<UTC time>-<first 8 characters of the run id>: sorted by time, unique per run."""
    return f"{REF_PREFIX}{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id[:8]}"


def commit_worktree(message: str) -> str:
    """Commit the working tree (`git add -A`, .gitignore applies) on top of HEAD through a
    temporary index, leaving HEAD, the index and the checkout as they were; returns the commit."""
    with tempfile.TemporaryDirectory() as folder:
        index = Path(folder) / "index"
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}
        current = Path(git("rev-parse", "--git-path", "index"))
        if current.is_file():
            shutil.copy(current, index)  # its stat cache spares rehashing unchanged files
        else:
            git("read-tree", "HEAD", env=env)
        git("add", "-A", env=env)
        return git("commit-tree", git("write-tree", env=env), "-p", "HEAD", "-m", message)


def tag_run(run_id: str, ref: str, commit: str) -> None:
    """Name the branch and commit on the MLflow run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        tracking.configure()
        client = mlflow.MlflowClient()
        client.set_tag(run_id, REF_TAG, ref)
        client.set_tag(run_id, COMMIT_TAG, commit)
    except (PipelineError, MlflowException, OSError) as exc:  # requests' errors are OSErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(
            f"pushed {ref} but could not tag MLflow run {run_id} with it ({first}); set the tags "
            f"{REF_TAG}={ref} and {COMMIT_TAG}={commit} by hand"
        ) from None


def record(remote: str, run_file: Path = MLFLOW_RUN_FILE, now: datetime | None = None) -> str:
    """Commit the retrain's working tree as a branch, push it to `remote`, then tag the MLflow run
    train recorded in `run_file`; returns the branch name."""
    run_id = artifacts.read_run_reference(run_file)["run_id"]
    try:
        git("remote", "get-url", remote)
    except PipelineError:
        raise PipelineError(
            f"git remote {remote!r} is not configured; add it (git remote add {remote} URL) or "
            "record no branch (unset RETRAIN_GIT_REMOTE)"
        ) from None
    if not dvc_remote_configured():
        raise PipelineError(
            "no DVC remote is configured, so the branch would point at data nobody can pull; add "
            "one (dvc remote add -d NAME URL), dvc push, then rerun python -m pipeline gitref"
        )
    ref = branch_name(run_id, now or datetime.now(timezone.utc))
    commit = commit_worktree(f"retrain: MLflow run {run_id} (python -m pipeline gitref)")
    git("branch", ref, commit)
    try:
        git("push", "--quiet", remote, f"refs/heads/{ref}:refs/heads/{ref}")
    except PipelineError as exc:
        raise PipelineError(
            f"could not push {ref} to {remote} ({exc}); the commit is on the local branch "
            f"{ref}: push it with git push {remote} {ref}"
        ) from None
    tag_run(run_id, ref, commit)
    log(f"gitref: {ref} ({commit[:12]}) pushed to {remote}; MLflow run {run_id} tagged {REF_TAG}")
    return ref


def main(params: Params, remote: str) -> None:
    """The subcommand; params are unused (the run file names the run)."""
    del params
    record(remote)
