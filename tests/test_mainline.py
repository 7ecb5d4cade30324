"""pipeline/registry/mainline.py: which runs may move `@champion` by themselves, judged in real git
repositories (a commit takes milliseconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.registry import mainline
from tests.helpers import empty_checkout, git

EXPERIMENT = {"DVC_EXP_BASELINE_REV": "0123456789abcdef", "DVC_EXP_NAME": "lr-trial"}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed project on branch main: params, code, dvc.yaml with a git-kept metric, the
    lock and the upstream fingerprint."""
    root = empty_checkout(tmp_path, monkeypatch)
    files = {
        "params.yaml": "train:\n  lr: 0.001\n",
        "pipeline/stages/train.py": "print('train')\n",
        "dvc.yaml": "stages:\n  evaluate:\n    metrics:\n      - reports/metrics.json:\n"
        "          cache: false\n",
        "dvc.lock": "schema: '2.0'\n",
        "reports/metrics.json": "{}\n",
        "data/upstream.json": '{"files": {}}\n',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "pipeline")
    return root


def judge(env: dict[str, str] | None = None, from_experiments: bool = False) -> mainline.Line:
    return mainline.judge("main", from_experiments, env or {})


def test_a_clean_commit_of_main_is_the_main_line_whatever_the_repro_itself_wrote(
    repo: Path,
) -> None:
    head = git("rev-parse", "--short=7", "HEAD")
    assert judge() == mainline.Line(True, f"clean commit {head} of 'main'")
    # What dvc repro rewrites between stages, and what scripts/retrain.sh refreshes before it.
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    Path("reports/metrics.json").write_text('{"test_accuracy": 0.9}\n')
    Path("data/upstream.json").write_text('{"files": {"a": {"sha256": "00"}}}\n')
    assert judge().may_move


def test_what_a_committee_repro_writes_leaves_a_clean_commit_the_main_line(repo: Path) -> None:
    """committee/dvc.yaml runs its stages from the root (wdir: ..), and git keeps its lock,
    metrics and decision: rewriting them is the repro's own doing, as for the root pipeline."""
    committee = {
        "committee/dvc.yaml": "stages:\n  member:\n    foreach: [1, 2]\n    do:\n"
        "      wdir: ..\n      outs:\n        - committee/members/${item}/model.pt\n"
        "  evaluate:\n    wdir: ..\n    metrics:\n      - committee/reports/metrics.json:\n"
        "          cache: false\n",
        "committee/dvc.lock": "schema: '2.0'\n",
        "committee/reports/metrics.json": "{}\n",
        "committee/members/1/model.pt": "weights\n",  # tracked here only to test the template
    }
    for name, text in committee.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    git("add", "-A")
    git("commit", "-q", "-m", "committee")
    for name in committee:
        if name != "committee/dvc.yaml":
            Path(name).write_text(Path(name).read_text() + "rewritten\n")
    assert judge().may_move, judge().reason
    Path("committee/dvc.yaml").write_text(Path("committee/dvc.yaml").read_text() + "# edited\n")
    assert judge().reason.startswith("committee/dvc.yaml differs from commit ")


@pytest.mark.parametrize("changed", ["params.yaml", "pipeline/stages/train.py", "dvc.yaml"])
def test_an_uncommitted_change_makes_a_repro_a_trial(repo: Path, changed: str) -> None:
    Path(changed).write_text(Path(changed).read_text() + "# edited\n")
    line = judge()
    assert not line.may_move
    assert line.reason.startswith(f"{changed} differs from commit ")
    assert line.reason.endswith("of 'main': an uncommitted trial")


def test_another_branch_or_an_old_commit_is_not_the_main_line(repo: Path) -> None:
    first = git("rev-parse", "HEAD")
    git("checkout", "-q", "-b", "feature")
    assert judge().may_move, "a branch at main's very commit holds main's code"
    Path("params.yaml").write_text("train:\n  lr: 0.01\n")
    git("commit", "-q", "-am", "try lr 0.01")
    line = judge()
    head = git("rev-parse", "--short=7", "HEAD")
    assert line == mainline.Line(
        False, f"commit {head} (branch 'feature') is not the tip of promote.main_branch 'main'"
    )
    assert mainline.judge("feature", False, {}).may_move, "main_branch names the main line"
    git("checkout", "-q", "--detach", first)
    assert judge().may_move, "a detached checkout of main's tip, as some CI systems make"
    git("checkout", "-q", "main")
    git("merge", "-q", "feature")
    git("checkout", "-q", "--detach", first)
    assert "(a detached HEAD) is not the tip" in judge().reason


def test_a_detached_checkout_of_origins_main_is_the_main_line(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone))
    monkeypatch.chdir(clone)
    git("checkout", "-q", "--detach", "origin/main")
    git("branch", "-q", "-D", "main")  # CI checkouts often have no local branch at all
    assert judge().may_move


def test_a_dvc_experiment_is_never_the_main_line_even_on_clean_main(repo: Path) -> None:
    line = judge(EXPERIMENT)
    assert line == mainline.Line(
        False, "DVC experiment 'lr-trial' (dvc exp run from commit 0123456), not the main line"
    )
    assert not judge({"DVC_EXP_BASELINE_REV": "abc"}).may_move


def test_from_experiments_lets_every_run_move_the_champion_and_says_why(repo: Path) -> None:
    line = judge(EXPERIMENT, from_experiments=True)
    assert line.may_move
    assert line.reason == (
        "DVC experiment 'lr-trial' (dvc exp run from commit 0123456), not the main line; "
        "promote.from_experiments is true, so it promotes by itself"
    )
    Path("params.yaml").write_text("train:\n  lr: 0.01\n")
    assert judge(from_experiments=True).may_move
    Path("dvc.yaml").write_text("stages: {}\n")
    assert judge().reason.startswith("dvc.yaml, params.yaml differ from commit ")


def test_outside_git_every_run_is_the_main_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert judge().may_move and judge().reason.startswith("not a git checkout")
    assert not judge(EXPERIMENT).may_move
