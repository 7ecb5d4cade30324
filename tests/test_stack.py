"""scripts/stack.sh without its services: what `env` prints and what `stop` ends, on stand-in
processes (the real stack is started by the slow tests in tests/test_team.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

STACK = Path(__file__).resolve().parents[1] / "scripts/stack.sh"


def stack(state: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(STACK), *args],
        env={**os.environ, "STACK_DIR": str(state), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def group_alive(pgid: int) -> bool:
    """A process of that group runs; zombies (this container's init does not reap them) aside."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rpartition(") ")[2].split()[:3]
        except (OSError, ValueError):
            continue  # exited while we looked
        if int(group) == pgid and state != "Z":
            return True
    return False


def test_env_quotes_values_so_eval_keeps_them_whole(tmp_path: Path) -> None:
    """A password with a space and a `;` stays one value and runs nothing under eval."""
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        for name in ("postgres", "s3", "mlflow"):
            (tmp_path / f"{name}.pid").write_text(f"{stand_in.pid}\n")
        (tmp_path / "s3.port").write_text("9000\n")
        (tmp_path / "mlflow.port").write_text("5000\n")
        password = "my pass; echo INJECTED"
        exports = stack(tmp_path, "env", "admin", MLFLOW_AUTH_ADMIN_PASSWORD=password)
        assert exports.returncode == 0, exports.stderr
        shell = subprocess.run(
            [
                "bash",
                "-c",
                'eval "$1"; printf "%s|%s" "$MLFLOW_TRACKING_PASSWORD" "$MLFLOW_TRACKING_URI"',
                "-",
                exports.stdout,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert shell.stdout == f"{password}|http://127.0.0.1:5000"
    finally:
        stand_in.kill()
        stand_in.wait()


def test_stop_ends_a_session_whose_leader_already_died(tmp_path: Path) -> None:
    """mlflow's workers outlive a killed `mlflow server` and keep its port: stop ends them too."""
    leader = subprocess.Popen(["bash", "-c", "sleep 300 & exit 0"], start_new_session=True)
    leader.wait()
    (tmp_path / "mlflow.pid").write_text(f"{leader.pid}\n")
    try:
        assert group_alive(leader.pid), "the worker should still run"
        done = stack(tmp_path, "stop")
        assert done.returncode == 0, done.stderr
        assert not group_alive(leader.pid)
        assert not (tmp_path / "mlflow.pid").exists()
    finally:
        if group_alive(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)
