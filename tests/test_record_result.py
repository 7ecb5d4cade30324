"""scripts/record_result.py: results/NAME.json from a preset's command, its metrics and its cost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Burns ~0.3 s of CPU, then writes the metrics an evaluate stage would.
PRESET = (
    "import json, pathlib, time\n"
    "end = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\n"
    "pathlib.Path('reports').mkdir()\n"
    "pathlib.Path('reports/metrics.json').write_text(json.dumps({'test_accuracy': 0.9946, "
    "'test_errors': 54, 'valid_accuracy': 0.995, 'member_1_test_accuracy': 0.993}))\n"
)


def record(tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    """record_result.py for the preset "best"; a leading "--continue" is passed as its option."""
    options = [command[0]] if command[:1] == ("--continue",) else []
    command = command[len(options) :]
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/record_result.py"), *options, "best"]
        + ["reports/metrics.json", "--", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def test_a_finished_preset_is_recorded_with_its_cost_and_machine(tmp_path: Path) -> None:
    done = record(tmp_path, sys.executable, "-c", PRESET)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results/best.json").read_text())
    assert (result["preset"], result["test_accuracy"], result["test_errors"]) == (
        "best",
        0.9946,
        54,
    )
    assert result["members"] == {"member_1_test_accuracy": 0.993}
    assert result["command"].endswith("-c '" + PRESET.replace("'", "'\"'\"'") + "'")
    assert result["cpu_seconds"] >= 0.3 and result["wall_seconds"] >= 0.3
    assert result["machine"]["cpu"] and result["machine"]["cores"] >= 1
    assert result["git_commit"] == "unknown"  # tmp_path is no git checkout
    assert "results/best.json: test accuracy 0.9946 (54 errors)" in done.stdout


def test_a_failed_preset_records_nothing_but_its_cost_so_far(tmp_path: Path) -> None:
    done = record(tmp_path, sys.executable, "-c", "raise SystemExit(3)")
    assert done.returncode == 3 and "exited with 3; nothing recorded" in done.stderr
    assert not (tmp_path / "results/best.json").exists()
    unfinished = json.loads((tmp_path / "results/unfinished/best.json").read_text())
    assert len(unfinished["sittings"]) == 1 and "--continue" in done.stderr
    done = record(tmp_path, sys.executable, "-c", "pass")  # exit 0 but no metrics
    assert done.returncode == 1 and "holds no test_accuracy" in done.stderr
    assert not (tmp_path / "results/best.json").exists()


def test_a_run_goes_on_after_its_machine_is_lost_and_sums_its_sittings(tmp_path: Path) -> None:
    """The first sitting is killed with its recorder (SIGKILL, as a machine that goes away) after
    burning CPU in a grandchild; the heartbeat has kept that cost. --continue runs the rest."""
    first = (
        "import os, subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', 'import time\\nend = time.process_time() + 0.6"
        "\\nwhile time.process_time() < end: pass\\ntime.sleep(30)'])\n"
    )
    recorder = (
        "import sys; sys.path.insert(0, 'scripts_dir'); import record_result\n"
        "record_result.HEARTBEAT = 0.2\n"
        "sys.exit(record_result.main(sys.argv[1:]))\n"
    ).replace("scripts_dir", str(ROOT / "scripts"))
    lost = subprocess.Popen(
        [sys.executable, "-c", recorder, "best", "reports/metrics.json", "--"]
        + [sys.executable, "-c", first],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group, killed whole below
    )
    unfinished = tmp_path / "results/unfinished/best.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the heartbeat has seen the grandchild's CPU
        time.sleep(0.1)
        if (
            unfinished.exists()
            and json.loads(unfinished.read_text())["sittings"][0]["cpu_seconds"] >= 0.5
        ):
            break
    os.killpg(lost.pid, signal.SIGKILL)
    lost.wait()
    done = record(tmp_path, "--continue", sys.executable, "-c", PRESET)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results/best.json").read_text())
    first_sitting, second = result["sittings"]
    assert first_sitting["cpu_seconds"] >= 0.5 and second["cpu_seconds"] >= 0.3
    assert result["cpu_seconds"] == round(first_sitting["cpu_seconds"] + second["cpu_seconds"], 1)
    assert result["command"] == first_sitting["command"] and "first" not in result["command"]
    assert second["machine"]["cpu"] and not unfinished.exists()


def test_a_run_continues_on_the_tree_its_first_sitting_changed(tmp_path: Path) -> None:
    """`dvc exp run` writes its params into params.yaml before it is interrupted; the continuing
    `dvc repro` runs on that tree, at the same HEAD, and the result names the clean commit."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("epochs: 10\n")
    git("add", "params.yaml")
    git("commit", "-qm", "params")
    head = git("rev-parse", "HEAD")
    interrupted = (
        "import pathlib; pathlib.Path('params.yaml').write_text('epochs: 150\\n'); exit(130)"
    )
    assert record(tmp_path, sys.executable, "-c", interrupted).returncode == 130
    done = record(tmp_path, "--continue", sys.executable, "-c", PRESET)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results/best.json").read_text())
    assert result["git_commit"] == head and len(result["sittings"]) == 2


def test_continue_needs_an_unfinished_run_at_the_same_commit(tmp_path: Path) -> None:
    done = record(tmp_path, "--continue", sys.executable, "-c", PRESET)
    assert done.returncode == 1 and "no unfinished run of best" in done.stderr
    (tmp_path / "results/unfinished").mkdir(parents=True)
    (tmp_path / "results/unfinished/best.json").write_text(
        json.dumps({"preset": "best", "git_commit": "1234abc", "sittings": []})
    )
    done = record(tmp_path, "--continue", sys.executable, "-c", PRESET)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("or start again without --continue")
    assert "ran at commit 1234abc, not unknown" in done.stderr


def test_a_command_that_cannot_start_records_nothing_and_exits_as_the_shell(
    tmp_path: Path,
) -> None:
    done = record(tmp_path, "no-such-command")
    assert (done.returncode, done.stderr) == (
        127,
        "error: no-such-command not found; check the command after -- and PATH\n",
    )
    (tmp_path / "preset.sh").write_text("exit 0\n")  # not executable
    done = record(tmp_path, "./preset.sh")
    assert (done.returncode, done.stderr) == (
        126,
        "error: cannot run ./preset.sh (Permission denied); check that it is an executable\n",
    )
    assert not (tmp_path / "results").exists()


def test_ctrl_c_lets_the_command_finish_its_cleanup_and_a_signal_exits_as_the_shell(
    tmp_path: Path,
) -> None:
    """Ctrl-C reaches the command's whole process group: the command must get the time to stop
    cleanly (DVC saves its experiment state), and its status is passed on, 128 + the signal."""
    command = (
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep(1); pathlib.Path('cleaned').touch(); sys.exit(130)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "pathlib.Path('started').touch()\n"
        "time.sleep(30)\n"
    )
    recorder = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/record_result.py"), "best", "reports/metrics.json"]
        + ["--", sys.executable, "-c", command],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group, as a terminal gives `make best`
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(recorder.pid, signal.SIGINT)
    _, err = recorder.communicate(timeout=60)
    assert (tmp_path / "cleaned").exists()
    assert recorder.returncode == 130
    assert "exited with 130; nothing recorded (" in err.splitlines()[-1], err
    assert "Traceback" not in err
    killed = record(tmp_path, "sh", "-c", "kill -9 $$")
    assert killed.returncode == 137, killed.stderr
