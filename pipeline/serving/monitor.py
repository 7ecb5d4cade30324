"""`python -m pipeline monitor`: is what the champion is asked still like what it was checked on?

It reads a window of records (pipeline/serving/records.py: the last monitor.days days, or --last N
records), splits them by the model that answered, since the server keeps answering with the version
it loaded when `@champion` moves, and judges each model's records against that model's own reference
(pipeline/serving/drift.py). Writes reports/monitoring.json and reports/monitoring.html and logs a
run to the MLflow experiment monitor.experiment, so the UI charts drift over time.

Exit status: 0 no drift (or no records yet, which it says), 3 drift, 1 an error.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.paths import COMMITTEE, MONITORING_FILE, MONITORING_HTML_FILE, Layout
from pipeline.progress import log
from pipeline.serving import drift, records

DRIFT_EXIT = 3
LOCAL_MODELS = (Layout(), COMMITTEE)  # where a checkpoint predict answered with may be


def local_reference(model: str) -> drift.Reference:
    """The reference beside the local checkpoint whose md5 a `predict` record names."""
    md5 = model.removeprefix("md5:")
    for layout in LOCAL_MODELS:
        if layout.model.exists() and hashlib.md5(layout.model.read_bytes()).hexdigest() == md5:
            return drift.Reference.load(layout.monitor_reference)
    raise PipelineError(
        f"no checkpoint here has md5 {md5}, so its monitoring reference is missing; run monitor "
        "where that model's models/ folder is (dvc checkout), or monitor the served model's records"
    )


def logged_reference(model_id: str) -> drift.Reference:
    """The reference the served model carries, from the MLflow store at MLFLOW_TRACKING_URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.registry import tracking
    from pipeline.serving.service import MONITOR_REFERENCE_FILE

    tracking.configure()
    try:
        location = mlflow.get_logged_model(model_id).artifact_location
        with tempfile.TemporaryDirectory() as scratch:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/artifacts/{MONITOR_REFERENCE_FILE}", dst_path=scratch
            )
            return drift.Reference.load(Path(path))
    except (MlflowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(
            f"no monitoring reference for model {model_id} in {tracking.tracking_uri()} "
            f"({first}); a model registered before monitoring existed has none: retrain and "
            "promote, or set MLFLOW_TRACKING_URI to the store that served it"
        ) from None


def reference_for(model: str) -> drift.Reference:
    return local_reference(model) if model.startswith("md5:") else logged_reference(model)


def window_of(records_of_one_model: Any) -> drift.Window:
    return drift.Window(
        records_of_one_model["digit"].to_numpy(np.int64),
        records_of_one_model["probability"].to_numpy(np.float64),
        records_of_one_model["ood"].fillna(False).to_numpy(bool),
        np.stack(records_of_one_model["features"].to_numpy()).astype(np.float32),
    )


def summary(report: dict[str, Any]) -> str:
    """The verdict in one line, naming each drifted model and its tests."""
    if report["verdict"] != "drift":
        return f"{report['verdict']}: {report['reason']}"
    named = [
        f"{model['model']}: {', '.join(t['name'] for t in model['tests'] if t['drift'])} "
        f"(adjusted p {min(t['adjusted_p'] for t in model['tests']):.2g})"
        for model in report["models"]
        if model.get("drift")
    ]
    return f"DRIFT in {report['records']} records ({report['window']}): {'; '.join(named)}"


def build_report(table: Any, params: Params, window: str) -> tuple[dict[str, Any], list]:
    """The report and, per judged model, (model, Window, Reference, Judgement)."""
    cfg = params.monitor
    base = {
        "window": window,
        "records": len(table),
        "alpha": cfg.alpha,
        "tests": list(drift.TESTS),
        "made": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
    }
    if table.empty:
        reason = f"no records in {window}; nothing to judge yet"
        return {**base, "verdict": "no records", "reason": reason, "models": []}, []
    counts = table["model"].value_counts()
    judged = [model for model, count in counts.items() if count >= cfg.min_records]
    listed = [
        {"model": model, "records": int(count), "judged": False} for model, count in counts.items()
    ]
    if not judged:
        reason = (
            f"{len(table)} records, fewer than monitor.min_records {cfg.min_records} per model; "
            "widen the window"
        )
        return {**base, "verdict": "too few records", "reason": reason, "models": listed}, []
    pairs = [(window_of(table[table["model"] == model]), reference_for(model)) for model in judged]
    judgements = drift.judge(pairs, cfg.alpha)
    models = []
    for model, (window_data, _), judgement in zip(judged, pairs, judgements, strict=True):
        models.append(
            {
                "model": model,
                "records": len(window_data),
                "judged": True,
                "drift": judgement.drift,
                "tests": [asdict(result) for result in judgement.results],
                "shift": asdict(judgement.shift),
            }
        )
    models += [entry for entry in listed if entry["model"] not in judged]
    drifted = any(m.get("drift") for m in models)
    reason = (
        f"{len(judged)} model(s) judged on {sum(m['records'] for m in models if m['judged'])} "
        f"records; Holm-adjusted p-values {'below' if drifted else 'all at or above'} alpha "
        f"{cfg.alpha}"
    )
    verdict = "drift" if drifted else "no drift"
    details = [
        (model, window_data, reference, judgement)
        for model, (window_data, reference), judgement in zip(
            judged, pairs, judgements, strict=True
        )
    ]
    return {**base, "verdict": verdict, "reason": reason, "models": models}, details


def log_run(report: dict[str, Any], params: Params) -> None:
    """One run in the monitoring experiment: the champion's p-values and shifts as metrics, so the
    UI charts them run after run."""
    import mlflow

    from pipeline.registry import tracking

    tracking.configure()
    tracking.use_experiment(params.monitor.experiment)
    judged = [m for m in report["models"] if m["judged"]]
    with mlflow.start_run(run_name=f"monitor {report['made']}"):
        mlflow.set_tags({"verdict": report["verdict"], "window": report["window"]})
        mlflow.log_params({"alpha": report["alpha"], "window": report["window"]})
        metrics = {"records": report["records"], "drift": int(report["verdict"] == "drift")}
        if judged:
            busiest = max(judged, key=lambda m: m["records"])
            mlflow.set_tag("model_id", busiest["model"])
            metrics |= {f"p_{t['name']}": t["adjusted_p"] for t in busiest["tests"]}
            shift = busiest["shift"]
            metrics |= {
                "mean_confidence": shift["window_mean_confidence"],
                "ood_rate": shift["ood_rate"],
                "mmd2": shift["mmd2"],
            }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(MONITORING_FILE))
        if MONITORING_HTML_FILE.exists():
            mlflow.log_artifact(str(MONITORING_HTML_FILE))


def main(params: Params, days: float | None = None, last: int | None = None) -> int:
    if days is None and last is None:
        days = params.monitor.days
    table = records.read_window(days, last)
    window = " and ".join(
        part
        for part in (
            f"the last {days:g} days" if days is not None else "",
            f"the last {last} records" if last is not None else "",
        )
        if part
    )
    report, details = build_report(table, params, window)
    report["summary"] = summary(report)
    atomic.write_json(MONITORING_FILE, report)
    from pipeline.serving import monitor_page

    atomic.write_text(MONITORING_HTML_FILE, monitor_page.render(report, details))
    log(f"monitor: {report['summary']}")
    log_run(report, params)
    log(f"monitor: wrote {MONITORING_FILE} and {MONITORING_HTML_FILE}")
    return DRIFT_EXIT if report["verdict"] == "drift" else 0
