"""MLflow plumbing shared by the stages: where the store is, and one run per pipeline execution.

`train` opens the run and records its id in models/mlflow_run.json; later stages reopen that run
so that params, metrics, figures and the model all land together.
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipeline import artifacts, numerics
from pipeline.errors import PipelineError
from pipeline.paths import COMMITTEE_DIR

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REACHABILITY_TIMEOUT_S = 5.0
# Needs a login on a server with authentication, unlike /health.
CREDENTIALS_PROBE = "/api/2.0/mlflow/experiments/search"
MNIST_IMAGE_SIZE = 28
# The repository's pipelines: the root one and the committee's (run with -P or by its path).
DVC_FILES = (Path("dvc.yaml"), COMMITTEE_DIR / "dvc.yaml")


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else mlflow.db in the repository root.

    DVC sets DVC_ROOT to the main repository for every stage it runs, queued experiments included;
    those run in a temp copy under .dvc/tmp/exps, where a relative store would be lost.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = os.environ.get("DVC_ROOT")
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}" if root else DEFAULT_TRACKING_URI


def check_reachable(uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Fail fast on a dead server: MLflow's own client would retry for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered; MLflow itself will report auth or path problems
    except (http.client.InvalidURL, ValueError) as exc:  # a bad port, a space, a broken [IPv6]
        raise PipelineError(
            f"MLFLOW_TRACKING_URI {uri!r} is not a valid URL ({exc}); fix it (e.g. "
            "http://127.0.0.1:5000) or unset it to use the local sqlite:///mlflow.db"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset "
            "MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db"
        ) from None


def check_credentials(uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Fail before any work when the server refuses our credentials (basic-auth, a proxy).

    /health answers anyone, so this asks for one experiment, which needs a login where there is
    one, with MLflow's own credentials ($MLFLOW_TRACKING_USERNAME/PASSWORD, a token, ...). A
    server without authentication answers 200; any answer but 401 or 403 is left to MLflow.
    """
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        answer = http_request(
            creds,
            CREDENTIALS_PROBE,
            "GET",
            max_retries=0,
            timeout=timeout_s,
            params={"max_results": 1},
        )
    except (MlflowException, OSError):
        return  # unreachable is check_reachable's to report; MLflow reports anything else
    causes = {401: "wrong or missing password", 403: "not allowed"}
    if answer.status_code not in causes:
        return
    raise PipelineError(
        f"MLflow tracking server {uri} refused {who(uri)} (HTTP {answer.status_code}: "
        f"{causes[answer.status_code]}); set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD to a user of that server (the local stack: "
        'eval "$(scripts/stack.sh env)") and rerun'
    )


def who(uri: str) -> str:
    """The user MLflow's own credentials log in as, for messages: "user 'ci'"."""
    from mlflow.utils.credentials import get_default_host_creds

    username = get_default_host_creds(uri).username
    return f"user {username!r}" if username else "anonymous access"


@contextmanager
def permitted(operation: str, remedy: str) -> Iterator[None]:
    """Turn the server's 403 on a write (basic-auth: the user lacks the grant, docs/team.md) into
    one line naming the refused `operation` and the `remedy`; other MLflow errors pass through."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        uri = tracking_uri()
        raise PipelineError(
            f"MLflow tracking server {uri} denied permission to {operation} ({who(uri)}); {remedy}"
        ) from None


def configure() -> str:
    """Point MLflow at the store, bounding its HTTP retries so a dead server fails in seconds,
    and check our credentials before the stage does any work."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = tracking_uri()
    check_reachable(uri)
    check_credentials(uri)
    quiet()
    mlflow.set_tracking_uri(uri)
    return uri


def quiet() -> None:
    """Stage output should be the stage's own lines: alembic logs INFO on every store open,
    MLflow announces each registration and model save and draws a bar for each download."""
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def git_output(*args: str) -> str | None:
    """A git command's output, or None outside a repository or without git."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    return (git_output("rev-parse", "HEAD") or "unknown").strip()


def run_tags(
    dataset_md5: dict[str, str], data_digest: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """A training or committee run's tags: the data it saw, the code, the DVC experiment, and the
    CPU and kernel libraries it ran on (numerics.environment)."""
    tags = {f"dataset.md5.{name}": md5 for name, md5 in dataset_md5.items()}
    tags |= {f"environment.{key}": value for key, value in numerics.environment().items()}
    tags["data_digest"] = data_digest
    tags["git_commit"] = git_commit()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return {**tags, **(extra or {})}


def pipeline_written_paths(dvc_files: tuple[Path, ...] = DVC_FILES) -> list[str]:
    """Each pipeline's dvc.lock and every out, metric and plot of its dvc.yaml, as paths from the
    repository root: what a `dvc repro` itself rewrites.

    A `foreach` stage's outs are templates (`committee/members/${item}/model.pt`); the folder
    before the first `${` stands for all of them.
    """
    written = []
    for dvc_yaml in dvc_files:
        written.append(str(dvc_yaml.with_suffix(".lock")))
        try:
            stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
        except (OSError, ValueError, AttributeError):
            continue
        for stage in stages.values():
            body = stage.get("do", stage)  # a foreach stage's keys sit under `do`
            wdir = dvc_yaml.parent / body.get("wdir", ".")
            for key in ("outs", "metrics", "plots"):
                for entry in body.get(key) or []:
                    out = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                    written.append(os.path.normpath(wdir / out.split("${")[0]))
    return written


def dirty_paths(status_z: str, written: list[str]) -> list[str]:
    """Paths in `git status --porcelain -z` output that differ from the commit, but for outputs.

    DVC rewrites dvc.lock (and the metrics git keeps) after every stage, so a stage sees them
    modified even in a repro of a clean commit; only the inputs a repro cannot touch (code,
    params.yaml, dvc.yaml, ...) tell whether the tree was dirty when the repro started.
    """
    entries = status_z.split("\0")
    found, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        if entry[0] in "RC":  # a rename or copy: the next entry is its source path
            i += 1
        path = entry[3:]
        if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in written):
            found.append(path)
    return found


def changed_inputs(also_written: tuple[str, ...] = ()) -> list[str]:
    """Tracked files that differ from HEAD, but for what the pipeline (and `also_written`'s
    writers) rewrite; see dirty_paths."""
    status = git_output("status", "--porcelain", "-z", "--untracked-files=no") or ""
    return dirty_paths(status, [*pipeline_written_paths(), *also_written])


def run_name(env: Mapping[str, str] | None = None) -> str:
    """The DVC experiment's name (DVC sets DVC_EXP_NAME for `dvc exp run`, queued or not), else
    repro-<short commit>, with -dirty when code or params differ from that commit (judged
    without the files the repro itself rewrites, see dirty_paths)."""
    environ = os.environ if env is None else env
    if environ.get("DVC_EXP_NAME"):
        return environ["DVC_EXP_NAME"]
    short = (git_output("rev-parse", "--short", "HEAD") or "").strip()
    if not short:
        return "repro-untracked"  # not a git checkout: nothing to name the code by
    return f"repro-{short}" + ("-dirty" if changed_inputs() else "")


def training_run_id(run_file: Path) -> str:
    """The run train recorded, checked to exist in this store; stages call it before their work."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = artifacts.read_run_reference(run_file)["run_id"]
    uri = configure()
    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise PipelineError(
            f"MLflow run {run_id} from {run_file} is not in the tracking store {uri}; point "
            "MLFLOW_TRACKING_URI at the store train used, or retrain (dvc repro -f train)"
        ) from None
    return run_id


@contextmanager
def resume_run(run_file: Path) -> Iterator[Any]:
    """Reopen the training run recorded in `run_file`, so a later stage logs into it."""
    import mlflow

    with mlflow.start_run(run_id=training_run_id(run_file)) as run:
        yield run


def _reusable(client: Any, run_id: str | None, experiment_id: str) -> bool:
    """An interrupted execution's run id is reopened only if it still exists in this experiment."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def use_experiment(name: str) -> str:
    """Make `name` the active experiment, creating it if needed; returns its id.

    On a local sqlite store MLflow would put a new experiment's artifacts under ./mlruns of the
    current directory, which for a queued DVC experiment is a temp copy of the repository that
    is deleted afterwards; they go beside the database instead. A server picks its own location.
    A deleted experiment keeps its name, so it can be neither used nor created again.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None and existing.lifecycle_stage == "deleted":
        raise PipelineError(
            f"MLflow experiment {name!r} is deleted in {uri}; restore it (MLFLOW_TRACKING_URI="
            f"{uri} mlflow experiments restore --experiment-id {existing.experiment_id}) or set "
            "another mlflow.experiment in params.yaml"
        )
    if uri.startswith("sqlite:///") and existing is None:
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns" / name
        try:
            mlflow.create_experiment(name, artifact_location=folder.as_uri())
        except MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # not just a parallel worker's creation
                raise
    return mlflow.set_experiment(name).experiment_id


@contextmanager
def start_run(
    experiment: str,
    params: dict[str, Any],
    tags: dict[str, str],
    resume_id: str | None = None,
    description: str | None = None,
    system_metrics: bool = False,
) -> Iterator[Any]:
    """Open the run of this pipeline execution with its name (run_name), params, tags and
    description; `resume_id` reopens the run of an interrupted execution (if it still exists) so
    that a resumed training keeps one run. `system_metrics` samples CPU, memory (and GPU with
    nvidia-ml-py) every $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (MLflow's default: 10)."""
    import mlflow

    configure()
    experiment_id = use_experiment(experiment)
    run_id = resume_id if _reusable(mlflow.MlflowClient(), resume_id, experiment_id) else None
    with mlflow.start_run(
        run_id=run_id,
        run_name=run_name(),
        tags=tags,
        description=description,
        log_system_metrics=system_metrics,
    ) as run:
        mlflow.log_params(params)
        yield run


def registered_name(base: str, image_size: int) -> str:
    """One registered model per input contract, so the `champion` alias never changes what clients
    send.

    28x28 models (784 inputs, MNIST's own size) register under `base` (mlflow.registered_model);
    models of another data.image_size S under `base-SxS`, with their own champion.
    """
    return base if image_size == MNIST_IMAGE_SIZE else f"{base}-{image_size}x{image_size}"
