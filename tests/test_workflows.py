"""The GitHub workflows: valid against GitHub's schema, clean under zizmor, wired to the right
scripts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}  # v\d+\.\d+\.\d+")


def tool(name: str) -> str:
    """A [dev] tool from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed; pip install -r requirements/dev.txt -e ."
    return found


def zizmor_findings(*paths: Path) -> list[dict]:
    result = subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--no-config",
            "--format",
            "json",
            "--min-severity",
            "medium",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 11, 12, 13, 14), result.stderr  # 1x: findings of some severity
    return json.loads(result.stdout)


def load(name: str) -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_both_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["pr.yml", "retrain.yml"]


def test_workflows_match_githubs_schema() -> None:
    result = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_of_medium_or_higher_severity() -> None:
    findings = zizmor_findings(*WORKFLOWS)
    assert findings == [], json.dumps(findings, indent=1)[:3000]


def test_zizmor_does_flag_an_unsafe_workflow(tmp_path: Path) -> None:
    """The check above can fail: the same call reports injection, unpinned actions and leaked
    credentials."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request_target\n"
        "jobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "        with: {ref: '${{ github.event.pull_request.head.sha }}'}\n"
        "      - run: echo '${{ github.event.pull_request.title }}'\n"
    )
    rules = {finding["ident"] for finding in zizmor_findings(bad)}
    assert {"template-injection", "artipacked", "dangerous-triggers"} <= rules, rules


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_pinned_credentials_dropped_permissions_minimal(path: Path) -> None:
    text = path.read_text()
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {}, "grant permissions per job, none at the top"
    for line in re.findall(r"uses: (.*)", text):
        assert PINNED.fullmatch(line.strip()), (
            f"{line!r}: pin by full commit SHA with a '  # vX.Y.Z' comment"
        )
    for step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False
        assert "${{" not in step.get("run", ""), (
            f"pass expressions through env, not into the script: {step}"
        )


def test_retrain_runs_on_schedule_and_by_hand_through_one_script() -> None:
    workflow = load("retrain.yml")
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    runs = [step for step in steps(workflow) if "run" in step]
    pipeline = [step for step in runs if "retrain.sh" in step["run"]]
    assert len(pipeline) == 1 and pipeline[0]["run"].strip() == "scripts/retrain.sh"
    assert pipeline[0]["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    # the monitor reads the service's records; labelled add reads the synced inbox
    assert pipeline[0]["env"]["MNIST_RECORDS"] == "${{ vars.MNIST_RECORDS }}"
    assert "labelled-inbox" in pipeline[0]["env"]["MNIST_LABELLED"]
    assert pipeline[0]["env"]["GIT_AUTHOR_NAME"], "retrain.sh commits a new dataset version"
    assert not any("dvc " in step["run"] for step in runs if step is not pipeline[0])
    upload = [
        step
        for step in steps(workflow)
        if step.get("uses", "").startswith("actions/upload-artifact@")
    ]
    assert "reports/" in upload[0]["with"]["path"] and upload[0]["if"] == "always()"
    assert workflow["jobs"]["retrain"]["permissions"] == {"contents": "write"}


def test_only_the_branch_push_sees_the_write_token_and_it_runs_after_the_retrain() -> None:
    """contents: write is for pushing the branch retrain/... (pipeline/registry/gitref.py); the
    training step and every other one run without the token, and the push step prints nothing of
    it."""
    job = load("retrain.yml")["jobs"]["retrain"]
    holders = [
        i
        for i, step in enumerate(job["steps"])
        if re.search(r"github\.token|secrets\.GITHUB_TOKEN", json.dumps(step))
    ]
    assert len(holders) == 1, holders
    push = job["steps"][holders[0]]
    assert "python -m pipeline gitref --remote origin" in push["run"]
    assert not re.search(r"\becho\b|set -x", push["run"]), "never print the token"
    retrain = next(i for i, step in enumerate(job["steps"]) if "retrain.sh" in step.get("run", ""))
    assert retrain < holders[0]


def test_pull_request_workflow_tests_reproduces_and_comments_the_diffs() -> None:
    workflow = load("pr.yml")
    assert "pull_request" in workflow[True]
    script = "\n".join(step.get("run", "") for step in steps(workflow))
    for command in (
        "python -m pytest -q",
        "dvc repro",
        'dvc metrics diff "origin/$BASE_REF" --md',
        'dvc params diff "origin/$BASE_REF" --md',
        'gh pr comment "$PR_NUMBER" --body-file comparison.md',
    ):
        assert command in script, command
    assert workflow["jobs"]["check"]["permissions"] == {
        "contents": "read",
        "pull-requests": "write",
    }


def test_retrain_script_is_valid_bash_and_executable() -> None:
    script = REPO / "scripts" / "retrain.sh"
    assert script.stat().st_mode & 0o111, "chmod +x scripts/retrain.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("accuracy, code", [(0.9865, 0), (0.983, 0), (0.9829, 1), (0.5, 1)])
def test_accuracy_floor_passes_good_models_and_fails_bad_ones(
    tmp_path: Path, accuracy: float, code: int
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test_accuracy": accuracy}))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "require_accuracy.py"), "0.983", str(metrics)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == code, result.stdout + result.stderr
    assert ("is below 0.983" in result.stdout) == bool(code)


def test_ci_fails_when_the_retrained_model_is_below_the_floor() -> None:
    """.ci/run (set -e) checks the real-MNIST accuracy after its last retrain, before "done"."""
    script = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    check = script.index("python scripts/require_accuracy.py 0.983\n")
    assert script.rindex("scripts/retrain.sh\n") < check < script.index('step "done"')


@pytest.mark.parametrize("name", ["pr.yml", "retrain.yml"])
def test_workflows_install_the_team_pins(name: str) -> None:
    """dvc-s3 for the S3 DVC remote both use, and for pr.yml the team tests' moto and psycopg;
    from the pins, with PyPI's torch (no PyTorch index, whose +cpu build is another binary)."""
    (install,) = [step["run"] for step in steps(load(name)) if step.get("name") == "Install"]
    assert "-r requirements/team.txt -e ." in install, install
    assert "download.pytorch.org" not in install and "--extra-index-url" not in install, install
