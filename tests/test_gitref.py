"""python -m pipeline gitref: the retrained working tree as a pushed branch named on the MLflow run,
without touching the checkout; the whole loop on the team stack is in tests/test_team.py."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline import __main__ as cli
from pipeline import artifacts
from pipeline.registry import gitref
from tests.helpers import git

NOW = datetime(2026, 11, 30, 17, 5, 9, tzinfo=timezone.utc)


@pytest.fixture
def repo(mlflow_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """mlflow_workdir as a git checkout of a bare `origin`, holding a run train would have
    recorded; returns that run's id."""
    import mlflow

    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    git("init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"))
    git("init", "-q", "-b", "main")
    git("remote", "add", "origin", str(tmp_path / "origin.git"))
    Path(".gitignore").write_text("mlflow.db\nmlruns/\nignored.bin\n")
    Path("dvc.lock").write_text("old lock\n")
    Path("params.yaml").write_text("{}\n")  # the defaults
    subprocess.run(["dvc", "init", "-q"], check=True, timeout=120)
    subprocess.run(
        ["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")],
        check=True,
        timeout=120,
    )
    git("add", "-A")
    git("commit", "-q", "-m", "pipeline")
    git("push", "-q", "origin", "main")
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_workdir / 'mlflow.db'}")
    mlflow.set_experiment("gitref")
    with mlflow.start_run() as run:
        pass
    artifacts.write_run_reference(run.info.run_id, run.info.experiment_id)
    return run.info.run_id


def test_the_branch_holds_the_trained_tree_is_pushed_and_named_on_the_run(repo: str) -> None:
    import mlflow

    Path("dvc.lock").write_text("new lock\n")  # what the retrain rewrote
    Path("ignored.bin").write_text("DVC's business")
    status = git("status", "--porcelain")
    ref = gitref.record("origin", now=NOW)

    assert ref == f"retrain/20261130T170509Z-{repo[:8]}"
    commit = git("rev-parse", ref)
    assert git("ls-remote", "origin", f"refs/heads/{ref}").split()[0] == commit
    assert git("show", f"{commit}:dvc.lock") == "new lock"
    assert git("show", f"{commit}:models/mlflow_run.json")  # new files too
    assert "ignored.bin" not in git("ls-tree", "-r", "--name-only", commit)
    assert git("rev-parse", f"{commit}^") == git("rev-parse", "main"), "a child of the trained HEAD"
    # The checkout, its branch and its index are as before.
    assert git("symbolic-ref", "--short", "HEAD") == "main"
    assert git("status", "--porcelain") == status
    tags = mlflow.MlflowClient().get_run(repo).data.tags
    assert (tags[gitref.REF_TAG], tags[gitref.COMMIT_TAG]) == (ref, commit)


def test_a_failed_push_is_one_error_line_keeps_the_branch_and_tags_nothing(
    repo: str, capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    git("remote", "set-url", "origin", "/nonexistent/origin.git")
    assert cli.main(["gitref", "--remote", "origin"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: could not push retrain/"), err
    ref = err.split()[4]
    assert err.endswith(f"push it with git push origin {ref}"), err
    assert git("branch", "--list", ref), "the commit stays on a local branch"
    assert gitref.REF_TAG not in mlflow.MlflowClient().get_run(repo).data.tags


def test_an_unknown_remote_is_named_before_any_commit(
    repo: str, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["gitref", "--remote", "upstream"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: git remote 'upstream' is not configured; add it (git remote add upstream URL) "
        "or record no branch (unset RETRAIN_GIT_REMOTE)"
    )
    assert not git("branch", "--list", "retrain/*")


def test_no_dvc_remote_means_no_branch(repo: str, capsys: pytest.CaptureFixture) -> None:
    """The workflow's gitref step runs after retrain.sh whatever remotes exist: a branch whose data
    is in no remote would restore nothing."""
    import mlflow

    subprocess.run(["dvc", "remote", "remove", "store"], check=True, timeout=120)
    assert cli.main(["gitref", "--remote", "origin"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no DVC remote is configured"), err
    assert not git("branch", "--list", "retrain/*")
    assert not git("ls-remote", "origin", "refs/heads/retrain/*")
    assert gitref.REF_TAG not in mlflow.MlflowClient().get_run(repo).data.tags


def test_a_tracking_server_that_is_down_after_the_push_is_one_line_naming_the_tags(
    repo: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert cli.main(["gitref", "--remote", "origin"]) == 1
    err = capsys.readouterr().err.strip()
    ref = git("branch", "--list", "--format=%(refname:short)", "retrain/*")
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: pushed {ref} but could not tag MLflow run {repo} with it ("), err
    assert err.endswith(
        f"set the tags git.ref={ref} and git.commit={git('rev-parse', ref)} by hand"
    )
    assert git("ls-remote", "origin", f"refs/heads/{ref}"), "the push stands"


@pytest.mark.parametrize(
    "setup, error",
    [
        ([], "error: RETRAIN_GIT_REMOTE=origin names no git remote;"),
        (
            [["git", "remote", "add", "origin", "/somewhere.git"]],
            "error: RETRAIN_GIT_REMOTE is set but no DVC remote is configured,",
        ),
    ],
)
def test_retrain_refuses_to_start_without_a_git_or_dvc_remote_to_push_to(
    dvc_project: Path, setup: list[list[str]], error: str
) -> None:
    for command in setup:
        subprocess.run(command, check=True, timeout=60)
    result = subprocess.run(
        ["scripts/retrain.sh"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RETRAIN_GIT_REMOTE": "origin"},
    )
    assert result.returncode == 1 and result.stderr.startswith(error), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not result.stdout, "before any work"
