"""Stage `promote`: point the registered model's `champion` alias at this run's version if earned.

A version earns it when there is no champion yet, or when it passes every gate of
pipeline/quality/gate.py against the champion: the same serving contract (MLflow input and output
signature), better test accuracy (by more than nothing and at least `promote.min_delta`), no digit
significantly worse (per-digit McNemar test on the two versions' answers to the same test images)
and no worse calibration. The champion's numbers, signature and per-image answers are read from the
registry and its run, never from local files, so the decision is right against a shared tracking
server that other machines also promote into. Either way the run is tagged with the decision and
reports/promotion.json says why, with every p-value. Reading the champion, deciding and writing
happen under the registry's lease lock (pipeline/registry/registry_lock.py), so concurrent
promotions from several machines take turns and the better model always ends champion.

Only the main line moves the alias by itself (pipeline/registry/mainline.py): a DVC experiment, a
dirty tree or another branch registers its version and records `would promote` or `would keep`.
`python -m pipeline promote --run ID` promotes one such run deliberately, through the same gates,
reading its evidence from MLflow. `python -m pipeline promote --committee` decides for the
committee's version (committee/dvc.yaml) from its files in committee/, by the same rules.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import artifacts
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.paths import COMMITTEE, Layout
from pipeline.progress import log
from pipeline.quality import gate
from pipeline.registry import mainline, registry_lock, tracking

if TYPE_CHECKING:  # pandas and mlflow load only where used (pipeline/artifacts.py), for start-up
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run

CHAMPION_ALIAS = "champion"
DECISION_TAG = "promotion.decision"  # `promoted` is written only once the alias has moved
ACCURACY_METRIC = "test_accuracy"
ECE_METRIC = "test_ece"
PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"  # evaluate logs it
DATA_TAG = "dataset.md5."  # train tags its run with each data file's MD5
WOULD = {True: "would promote", False: "would keep"}  # decisions off the main line


@dataclass(frozen=True)
class Version:
    """A registered version with what the gate compares: its numbers and per-image answers."""

    evidence: gate.Evidence
    run_id: str
    answers: pd.DataFrame  # index, actual, predicted (test set)
    data_md5: dict[str, str] = field(default_factory=dict)


def registered_version(client: MlflowClient, name: str, run_id: str) -> int:
    """The version that train registered from this run."""
    versions = [
        int(v.version) for v in client.search_model_versions(f"run_id='{run_id}'") if v.name == name
    ]
    if not versions:
        raise PipelineError(
            f"run {run_id} has no version of registered model {name!r} in "
            f"{tracking.tracking_uri()}; rerun the train stage against this tracking store (dvc "
            "repro train)"
        )
    return max(versions)


def signature_text(name: str, version: int) -> str:
    """The version's MLflow signature as one line, e.g. inputs [Tensor('float32', (-1, 784))] ->
    outputs [...]."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
    except (MlflowException, OSError) as exc:
        raise PipelineError(
            f"cannot read the model of version {version} of {name!r} "
            f"({str(exc).splitlines()[0]}); its files are missing from the artifact store, so "
            "its serving contract is unknown; retrain it (dvc repro train)"
        ) from None
    return (
        f"inputs {signature.inputs} -> outputs {signature.outputs}" if signature else "no signature"
    )


def champion_version(client: MlflowClient, name: str) -> Version | None:
    # Reading the alias map avoids telling "no such alias" apart from other errors by error code.
    number = client.get_registered_model(name).aliases.get(CHAMPION_ALIAS)
    if number is None:
        return None
    remedy = (
        f"re-evaluate that run with this pipeline or remove the alias "
        f"(MlflowClient().delete_registered_model_alias({name!r}, {CHAMPION_ALIAS!r}))"
    )
    return logged_version(
        client, name, int(number), f"{CHAMPION_ALIAS} version {number} of {name!r}", remedy
    )


def logged_version(
    client: MlflowClient, name: str, number: int, label: str, remedy: str
) -> Version:
    """A version's evidence as its run logged it: test metrics, per-image answers, signature.

    `label` names the version in errors ("champion version 3 of 'mnist-mlp'"); `remedy` says how
    to give it the missing pieces.
    """
    run_id = client.get_model_version(name, str(number)).run_id
    if run_id is None:  # a version registered from files rather than from a run
        raise PipelineError(
            f"{label} was registered without a run, so nothing can be compared with it; {remedy}"
        )
    run = client.get_run(run_id)
    metrics = run.data.metrics
    missing = [key for key in (ACCURACY_METRIC, ECE_METRIC) if key not in metrics]
    if missing:
        raise PipelineError(
            f"{label} has no {' or '.join(missing)} metric in run {run_id}, so nothing can be "
            f"compared with it; {remedy}"
        )
    try:
        answers = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT)
    except Exception as exc:  # MLflow raises several kinds for a missing artifact  # noqa: BLE001
        raise PipelineError(
            f"{label} has no {PREDICTIONS_ARTIFACT} in run {run_id} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}), so its digits "
            f"cannot be compared; {remedy}"
        ) from None
    evidence = gate.Evidence(
        number,
        float(metrics[ACCURACY_METRIC]),
        float(metrics[ECE_METRIC]),
        signature_text(name, number),
    )
    return Version(evidence, run_id, artifacts.read_predictions(Path(answers)), data_md5(run))


def data_md5(run: Run) -> dict[str, str]:
    return {k.removeprefix(DATA_TAG): v for k, v in run.data.tags.items() if k.startswith(DATA_TAG)}


def changed_files(new: dict[str, str], old: Version | None) -> list[str] | None:
    """Data files whose MD5 differs from the champion's training data; None when unknown."""
    if old is None or not old.data_md5:
        return None
    return sorted(f for f in new.keys() | old.data_md5.keys() if new.get(f) != old.data_md5.get(f))


def compare_digits(
    new: pd.DataFrame, champion: pd.DataFrame, settings: gate.Settings
) -> list[gate.ClassComparison]:
    """Pair the two versions' answers image by image; they must cover the same test set."""
    if len(new) != len(champion) or not np.array_equal(
        new["actual"].to_numpy(), champion["actual"].to_numpy()
    ):
        raise PipelineError(
            f"the new version's predictions ({len(new)} test images) and the champion's "
            f"({len(champion)}) do not hold the same test labels, so the versions were tested on "
            "different data and cannot be compared per digit; evaluate both on the same test set"
        )
    actual = new["actual"].to_numpy()
    return gate.compare_classes(
        actual,
        champion["predicted"].to_numpy() == actual,
        new["predicted"].to_numpy() == actual,
        settings,
    )


def settings_from(params: Params, allow_contract_change: bool) -> gate.Settings:
    p = params.promote
    return gate.Settings(
        p.min_delta, p.class_drop_p, p.max_class_drop, p.max_ece_increase, allow_contract_change
    )


def promote(
    client: MlflowClient,
    name: str,
    run_id: str,
    metrics: dict[str, float],
    answers: pd.DataFrame,
    settings: gate.Settings,
    line: mainline.Line,
) -> dict:
    """Decide, tag the run, move the alias if earned and `line` allows it -> the record for
    reports/promotion.json. Where it may not, the decision reads `would promote`/`would keep`.

    The reasons are tagged first, in one request, and `promoted` only once the alias has moved:
    had the alias moved first and the tags failed, a rerun would only find the version already
    champion, and why it became champion would be lost; and no failure leaves a run that says
    `promoted` beside a champion that did not move.
    """
    from mlflow.entities import RunTag

    run = client.get_run(run_id)
    if run.info.lifecycle_stage != "active":
        raise PipelineError(
            f"run {run_id} is deleted in {tracking.tracking_uri()}, so its version cannot become "
            f"champion (MLflow refuses its tags, and `mlflow gc` would erase its model); restore "
            f"it (mlflow runs restore --run-id {run_id}) or promote another run"
        )
    version = registered_version(client, name, run_id)
    new = gate.Evidence(
        version,
        float(metrics[ACCURACY_METRIC]),
        float(metrics[ECE_METRIC]),
        signature_text(name, version),
    )
    with registry_lock.held(client, name):
        before = champion_version(client, name)
        if before is None:
            verdict = gate.Verdict(
                True, f"no {CHAMPION_ALIAS} yet: version {version} becomes the first"
            )
        else:
            classes = compare_digits(answers, before.answers, settings)
            verdict = gate.decide(new, before.evidence, classes, settings)
        moved = verdict.promote and line.may_move
        decision = ("promoted" if moved else "kept") if line.may_move else WOULD[verdict.promote]
        tags = {
            "promotion.reason": verdict.reason[:5000],
            "promotion.failed_gates": ",".join(verdict.failed_gates) or "none",
            "promotion.may_move_champion": str(line.may_move).lower(),
            "promotion.may_move_champion_reason": line.reason[:5000],
        }
        if verdict.classes:
            p_values = {str(c.digit): round(c.p_value, 6) for c in verdict.classes}
            tags["promotion.digit_p_values"] = json.dumps(p_values)
        if not moved:  # `promoted` waits for the alias below
            tags[DECISION_TAG] = decision
        with tracking.permitted(
            f"tag run {run_id} with the promotion decision",
            "it needs EDIT on the run's experiment; have an admin grant it, or promote as a user "
            "who has it (ci); nothing was changed",
        ):
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        if moved:
            with tracking.permitted(
                f"move the {CHAMPION_ALIAS} alias of {name!r} to version {version}",
                f"it needs EDIT on registered model {name!r}; the champion did not move: have an "
                "admin grant EDIT, or promote as a user who has it (ci), and rerun",
            ):
                client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
            client.set_tag(run_id, DECISION_TAG, decision)
    old = before.evidence if before else None
    return {
        "decision": decision,
        "reason": verdict.reason,
        "failed_gates": list(verdict.failed_gates),
        "may_move_champion": line.may_move,
        "may_move_champion_reason": line.reason,
        "registered_model": name,
        "alias": CHAMPION_ALIAS,
        "run_id": run_id,
        "version": version,
        "test_accuracy": new.accuracy,
        "test_ece": new.ece,
        "signature": new.signature,
        "previous_champion_version": old.version if old else None,
        "previous_champion_test_accuracy": old.accuracy if old else None,
        "previous_champion_test_ece": old.ece if old else None,
        "previous_champion_signature": old.signature if old else None,
        "champion_version": version if moved else (old.version if old else None),
        "digits": [{**asdict(c), "drop_points": round(c.drop_points, 4)} for c in verdict.classes],
        "settings": asdict(settings),
        "data_changed_since_champion": changed_files(data_md5(run), before),
    }


def summary(record: dict) -> str:
    """The stage's last line; off the main line, with the command that promotes it after all."""
    text = f"promote: {record['decision']}: {record['reason']}"
    if not record["may_move_champion"]:
        text += f" [{record['may_move_champion_reason']}; the champion does not move]"
        if record["decision"] == WOULD[True]:
            text += f"; promote it with: python -m pipeline promote --run {record['run_id']}"
    return text


def main(
    params: Params,
    allow_contract_change: bool = False,
    run: str | None = None,
    committee: bool = False,
) -> None:
    """The stage, from this workspace's evaluation; with `run`, that run's version, deliberately;
    with `committee`, the committee's version from its files in committee/ (committee/dvc.yaml)."""
    from mlflow import MlflowClient

    settings = settings_from(params, allow_contract_change)
    if run is not None:
        log(summary(promote_run(MlflowClient(tracking.configure()), run, settings)))
        return
    layout = COMMITTEE if committee else Layout()
    metrics = artifacts.read_metrics(layout.metrics)
    answers = artifacts.read_predictions(layout.predictions)
    run_id = tracking.training_run_id(layout.run)
    name = tracking.registered_name(params.mlflow.registered_model, params.data.image_size)
    line = mainline.judge(params.promote.main_branch, params.promote.from_experiments)
    record = promote(MlflowClient(), name, run_id, metrics, answers, settings, line)
    artifacts.write_promotion(record, layout.promotion)
    log(summary(record))


def promote_run(client: MlflowClient, run_id: str, settings: gate.Settings) -> dict:
    """`python -m pipeline promote --run ID`: the same gates, with every piece of evidence read
    from that run in MLflow (a queued experiment's files are not in this workspace). The record
    goes to the run's tags and the output; reports/promotion.json stays this workspace's."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise PipelineError(
            f"cannot read run {run_id!r} from the tracking store {tracking.tracking_uri()} "
            f"({(str(exc).splitlines() or [exc.error_code])[0]}); copy the id from the "
            "experiment's reports/promotion.json (run_id) or the MLflow UI, with "
            "MLFLOW_TRACKING_URI pointing at the store it ran against"
        ) from None
    logged = run.data.params
    try:
        name = tracking.registered_name(
            logged["mlflow.registered_model"], int(logged["data.image_size"])
        )
    except (KeyError, ValueError):
        raise PipelineError(
            f"run {run_id} has no mlflow.registered_model and data.image_size params, so it is no "
            "run of this pipeline's train stage; give the id of a run that train opened"
        ) from None
    number = registered_version(client, name, run_id)
    version = logged_version(
        client,
        name,
        number,
        f"version {number} of {name!r}",
        "only a run that finished its evaluate stage can be promoted; rerun that experiment",
    )
    metrics = {ACCURACY_METRIC: version.evidence.accuracy, ECE_METRIC: version.evidence.ece}
    line = mainline.Line(True, f"deliberate: python -m pipeline promote --run {run_id}")
    return promote(client, name, run_id, metrics, version.answers, settings, line)
