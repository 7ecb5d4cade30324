"""Stage `promote`: point the registered model's `champion` alias at this run's version if it earns it.

A version earns it when there is no champion yet, or when its test accuracy beats the champion's
by at least `promote.min_delta` (and by more than nothing: a tie keeps the model already serving).
The champion's accuracy is read from its own run in the registry, never from local files, so the
decision is right against a shared tracking server that other machines also promote into.
Either way the run is tagged with the decision and reports/promotion.json says why. Reading the
champion, deciding and writing happen under the registry's lease lock (pipeline/registry_lock.py),
so concurrent promotions from several machines take turns and the better model always ends champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import artifacts, registry_lock, tracking
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.paths import MLFLOW_RUN_FILE
from pipeline.progress import log

CHAMPION_ALIAS = "champion"
ACCURACY_METRIC = "test_accuracy"
DATA_TAG = "dataset.md5."  # train tags its run with each data file's MD5
# Accuracies are ratios of counts; this only absorbs float rounding in `new - old >= min_delta`.
_EPSILON = 1e-12


@dataclass(frozen=True)
class Champion:
    version: int
    accuracy: float
    run_id: str
    data_md5: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(version: int, accuracy: float, champion: Champion | None, min_delta: float) -> Decision:
    if champion is None:
        return Decision(True, f"no {CHAMPION_ALIAS} yet: version {version} becomes the first")
    if champion.version == version:
        return Decision(False, f"version {version} is already the {CHAMPION_ALIAS}")
    gain = accuracy - champion.accuracy
    versus = (
        f"version {version} test accuracy {accuracy:.4f} vs {CHAMPION_ALIAS} version "
        f"{champion.version} {champion.accuracy:.4f} ({gain:+.4f})"
    )
    if gain > _EPSILON and gain >= min_delta - _EPSILON:
        return Decision(True, f"{versus} beats it by at least min_delta {min_delta}")
    needed = "more than 0" if min_delta == 0 else f"at least {min_delta}"
    return Decision(False, f"{versus}: the gain must be {needed} to promote")


def registered_version(client, name: str, run_id: str) -> int:
    """The version that train registered from this run."""
    versions = [int(v.version) for v in client.search_model_versions(f"run_id='{run_id}'") if v.name == name]
    if not versions:
        raise PipelineError(
            f"run {run_id} has no version of registered model {name!r} in {tracking.tracking_uri()}; "
            "rerun the train stage against this tracking store (dvc repro train)"
        )
    return max(versions)


def current_champion(client, name: str) -> Champion | None:
    # Reading the alias map avoids telling "no such alias" apart from other errors by error code.
    number = client.get_registered_model(name).aliases.get(CHAMPION_ALIAS)
    if number is None:
        return None
    version = client.get_model_version(name, str(number))
    run = client.get_run(version.run_id)
    accuracy = run.data.metrics.get(ACCURACY_METRIC)
    if accuracy is None:
        raise PipelineError(
            f"{CHAMPION_ALIAS} version {version.version} of {name!r} has no {ACCURACY_METRIC} metric in run "
            f"{version.run_id}, so nothing can be compared with it; log that metric in the run or remove the alias "
            f"(MlflowClient().delete_registered_model_alias({name!r}, {CHAMPION_ALIAS!r}))"
        )
    return Champion(int(version.version), float(accuracy), version.run_id, data_md5(run))


def data_md5(run) -> dict[str, str]:
    return {k.removeprefix(DATA_TAG): v for k, v in run.data.tags.items() if k.startswith(DATA_TAG)}


def changed_files(new: dict[str, str], old: Champion | None) -> list[str] | None:
    """Data files whose MD5 differs from the champion's training data; None when unknown."""
    if old is None or not old.data_md5:
        return None
    return sorted(f for f in new.keys() | old.data_md5.keys() if new.get(f) != old.data_md5.get(f))


def promote(client, name: str, run_id: str, accuracy: float, min_delta: float) -> dict:
    """Decide, move the alias if earned, tag the run; returns the record for reports/promotion.json."""
    version = registered_version(client, name, run_id)
    with registry_lock.held(client, name):
        before = current_champion(client, name)
        decision = decide(version, accuracy, before, min_delta)
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
        client.set_tag(run_id, "promotion.decision", "promoted" if decision.promote else "kept")
        client.set_tag(run_id, "promotion.reason", decision.reason)
    return {
        "decision": "promoted" if decision.promote else "kept",
        "reason": decision.reason,
        "registered_model": name,
        "alias": CHAMPION_ALIAS,
        "run_id": run_id,
        "version": version,
        "test_accuracy": accuracy,
        "previous_champion_version": before.version if before else None,
        "previous_champion_test_accuracy": before.accuracy if before else None,
        "champion_version": version if decision.promote else before.version,
        "min_delta": min_delta,
        "data_changed_since_champion": changed_files(data_md5(client.get_run(run_id)), before),
    }


def main(params: Params) -> None:
    from mlflow import MlflowClient

    accuracy = float(artifacts.read_metrics()[ACCURACY_METRIC])
    run_id = tracking.training_run_id(MLFLOW_RUN_FILE)
    record = promote(MlflowClient(), params.mlflow.registered_model, run_id, accuracy, params.promote.min_delta)
    artifacts.write_promotion(record)
    log(f"promote: {record['decision']}: {record['reason']}")
