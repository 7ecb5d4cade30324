"""The registry read as a model card: the registered model's description, each version's
description and tags, and a model_card.md logged with the version.

train registers the version and gives it what is known then (valid accuracy, data digest, git
commit, DVC experiment, params hash). evaluate, the stage that computes the test metrics, adds
them and writes the card (it needs the per-class table). Not promote: a version that does not
take the champion alias deserves its test numbers too, and promote decides rather than
describes. Not a registration moved to evaluate: predict and promote rely on train's version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.datasets import NUM_CLASSES
from pipeline.progress import log

CARD_FILE = "model_card.md"
TEST_TAGS = ("test_accuracy", "valid_accuracy", "macro_f1")
RESULT = " Result: "  # the run description's last part, the only one evaluate rewrites
COMMITTEE_TAG = (
    "committee_member_runs"  # set by the committee stage only (pipeline/stages/committee.py)
)


def params_hash(flat_params: dict[str, Any]) -> str:
    """A short digest of every param (as MLflow logs them): equal settings are found at a glance."""
    text = json.dumps({k: str(v) for k, v in flat_params.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_run(flat_params: dict[str, Any], data_digest: str, test_accuracy: float | None) -> str:
    """The run description (MLflow note): model, headline params, data, the result once known."""
    p = {k: str(v) for k, v in flat_params.items()}
    size = int(p.get("data.image_size", "28"))
    layers = [size * size, *json.loads(p.get("model.hidden", "[]")), NUM_CLASSES]
    description = (
        f"MLP {'-'.join(map(str, layers))} ({p.get('model.activation')}), trained with "
        f"{p.get('train.optimizer')} lr {p.get('train.lr')} "
        f"({p.get('train.lr_schedule')} schedule), {p.get('train.epochs')} epochs of batch "
        f"{p.get('train.batch_size')}, seed {p.get('train.seed')}. "
        f"Data: {p.get('data.name')} at {size}x{size}, digest {data_digest}."
    )
    return with_result(description, test_accuracy)


def with_result(description: str, test_accuracy: float | None) -> str:
    """`description` with its Result part replaced (or added), the rest kept as the stage that
    started the run wrote it: a committee's note says what its members are."""
    result = (
        f"test accuracy {test_accuracy:.4f}"
        if test_accuracy is not None
        else "test accuracy: not evaluated yet"
    )
    return f"{description.partition(RESULT)[0]}{RESULT}{result}."


def registered_model_description(name: str) -> str:
    return (
        f"{name}: a multilayer perceptron that reads one handwritten digit (0-9) per row, trained "
        "by the mnist-mlp-pipeline DVC stages (download, stats, split, validate, train, evaluate, "
        "report, promote).\n\n"
        'Input contract (labelled-answers/1): {"inputs": [row, ...]}, at most 1024 rows, each '
        "either S*S pixel values in [0, 1] (0 = background, 1 = ink: a light digit on a dark "
        "ground, as in MNIST), flattened row by row, or a picture file (PNG, JPEG) as a base64 "
        "string, which is cropped, scaled and centred as `python -m pipeline predict` does. S is "
        "the version's data.image_size param: 28 (784 values) or 16 (256); the input_shape tag "
        "says which. A bad row refuses the request with HTTP 400 naming the row and the fix.\n\n"
        "Output: one answer per row: digit, probability, the 10 probabilities, ood (whether the "
        "input's pixel statistics lie far from the training digits') and ood_reason; with "
        '{"params": {"features": true}} also the last hidden layer\'s activations. With '
        '{"params": {"packed": "uint8"}} (or "float32") each row is instead the base64 of its '
        "S*S pixels. The "
        "`champion` alias marks the version the promote stage chose; each version's tags and "
        "model_card.md give its metrics. Versions without the `contract` metadata answer 10 raw "
        "scores per row."
    )


def version_tags(
    run_params: dict[str, Any], tags: dict[str, str], valid_accuracy: float
) -> dict[str, str]:
    """What train knows when it registers a version (the run's params and tags as logged)."""
    size = int(str(run_params.get("data.image_size", 28)))
    return {
        "valid_accuracy": f"{valid_accuracy:.4f}",
        "data_digest": tags.get("data_digest", "unknown"),
        "git_commit": tags.get("git_commit", "unknown"),
        "dvc_experiment": tags.get("dvc_experiment", "none"),
        "params_hash": params_hash(run_params),
        "input_shape": f"[N, {size * size}]",
    }


def describe_version(run_name: str, run_id: str, description: str) -> str:
    return f"Trained by run {run_name} ({run_id}). {description}"


def register(client: Any, name: str, version: str, run: Any, valid_accuracy: float) -> None:
    """train: describe the registered model and the version it just registered."""
    client.update_registered_model(name, description=registered_model_description(name))
    for key, value in version_tags(run.data.params, run.data.tags, valid_accuracy).items():
        client.set_model_version_tag(name, version, key, value)
    note = run.data.tags.get("mlflow.note.content", "")
    client.update_model_version(
        name, version, description=describe_version(run.info.run_name, run.info.run_id, note)
    )


def _datasets(run: Any) -> list[str]:
    rows = []
    for item in run.inputs.dataset_inputs:
        dataset = item.dataset
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
        shape = json.loads(dataset.profile or "{}").get("features_shape", ["?"])
        rows.append(
            f"| {dataset.name} | {context} | {shape[0]} | `{dataset.digest}` | {dataset.source} |"
        )
    return rows


def card(
    name: str, version: str | None, run: Any, metrics: dict[str, float], per_class: pd.DataFrame
) -> str:
    """model_card.md: intended use, training data, per-class metrics, limitations, reproduction."""
    p, tags = run.data.params, run.data.tags
    commit = tags.get("git_commit", "unknown")
    experiment = tags.get("dvc_experiment")
    classes = "\n".join(
        f"| {int(r['class'])} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} "
        f"| {int(r['support'])} |"
        for _, r in per_class.iterrows()
    )
    repro = (  # the committee has a pipeline of its own, which `dvc repro` never runs
        "dvc repro committee/dvc.yaml   # or: make committee"
        if COMMITTEE_TAG in tags
        else "dvc repro"
    )
    checkout = f"dvc exp apply {experiment}   # the experiment's params" if experiment else repro
    return f"""# Model card: {name} version {version or "(not registered)"}

{tags.get("mlflow.note.content", "")}

## Intended use
Reading one handwritten digit per image, framed as MNIST frames them: a single light digit on a
dark ground, size-normalised into the centre of a {p.get("data.image_size", "28")}-pixel square.
A teaching and reference model for a reproducible DVC + MLflow pipeline; not for decisions that
matter (cheques, postcodes, forms) without a person checking.

## Training data
Dataset `{p.get("data.name", "?")}`, data digest `{tags.get("data_digest", "unknown")}`
(raw files' checksums, image size and the split's index files).

| dataset | context | images | digest | source |
| --- | --- | --- | --- | --- |
{chr(10).join(_datasets(run))}

## Metrics
Test accuracy {metrics["test_accuracy"]:.4f} ({metrics.get("test_errors", "?")} errors),
valid accuracy {metrics["valid_accuracy"]:.4f}, macro-F1 {metrics["macro_f1"]:.4f}
(the evaluate stage, run {run.info.run_id}).

| class | precision | recall | F1 | test images |
| --- | --- | --- | --- | --- |
{classes}

## Serving
`mlflow models serve -m models:/{name}@champion` answers `{{"inputs": [row, ...]}}` (at most 1024
rows), each row {int(p.get("data.image_size", "28")) ** 2} pixel values in [0, 1] or a PNG or
JPEG file as base64, with one answer per row: `digit`, `probability`, the 10 `probabilities`,
`ood` and `ood_reason` (and the `features` with `{{"params": {{"features": true}}}}`), the
signature's labelled-answers/1 contract. With `{{"params": {{"packed": "uint8"}}}}` (or
`"float32"`) each row is instead the base64 of its pixels. A bad row gets HTTP 400 naming it and
the fix.

## Limitations
- Only the ten digits: every input gets one of them, a letter or a blank included.
- Centred single digits: an MLP has no translation invariance, so digits off-centre, cropped,
  touching others or much smaller than the frame are misread; `python -m pipeline predict`
  crops, scales and centres a photo or scan the way MNIST was prepared before it predicts.
- Dark-on-light pictures must be inverted first (predict does this).
- Handwriting of the source dataset only (MNIST: US census staff and students).

## Reproduce
Params hash `{params_hash(p)}`; every param is logged on run {run.info.run_id}.

```
git checkout {commit}
{checkout}
```
"""


def logged_model_id(version: Any) -> str | None:
    """The logged model of a version (MLflow 3.17 leaves model_id empty; the source names it)."""
    source = str(version.source or "")
    return version.model_id or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else None
    )


def complete(run_id: str, metrics: dict[str, float], per_class: pd.DataFrame) -> None:
    """evaluate: put the test accuracy into the run's description, add the test metrics to the
    run's version(s), and log model_card.md with each version's model and on the run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    # A run opened without a description (not by train or committee) gets train's
    note = run.data.tags.get("mlflow.note.content") or describe_run(
        run.data.params, run.data.tags.get("data_digest", "unknown"), None
    )
    note = with_result(note, metrics["test_accuracy"])
    client.set_tag(run_id, "mlflow.note.content", note)
    run = client.get_run(run_id)
    versions = client.search_model_versions(f"run_id='{run_id}'")
    if not versions:
        log(f"run {run_id} registered no model version: {CARD_FILE} goes on the run only")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CARD_FILE
        for version in versions:
            for key in TEST_TAGS:
                client.set_model_version_tag(
                    version.name, version.version, key, f"{metrics[key]:.4f}"
                )
            description = describe_version(run.info.run_name, run_id, note)
            client.update_model_version(version.name, version.version, description=description)
            path.write_text(card(version.name, version.version, run, metrics, per_class))
            model_id = logged_model_id(version)
            if model_id:
                client.log_model_artifact(model_id, str(path))
        if not versions:
            name = run.data.params.get("mlflow.registered_model", "unregistered")
            path.write_text(card(name, None, run, metrics, per_class))
        client.log_artifact(run_id, str(path))
