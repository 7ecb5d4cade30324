"""docs/mlflow.md: every name the pipeline writes into MLflow (experiments, run params, metrics
and tags, registered models, aliases, version tags), with what each means.

The names are the patterns below; `--store` checks them against a store the pipeline wrote: every
name found there must match a pattern, so a name added to the code without a line here fails
(tests/test_doc_blocks.py runs that check on the store its tutorial run fills). Patterns may
name what a given run lacks (the committee's, system metrics, a 16x16 model).

    python docs/gen/gen_mlflow_doc.py                       # rewrite the page
    python docs/gen/gen_mlflow_doc.py --check               # exit 1 if the page is stale
    python docs/gen/gen_mlflow_doc.py --store sqlite:///mlflow.db   # exit 1 on an undocumented name
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from page import write_or_check

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "mlflow.md"

# (pattern, meaning) by kind of name; `*` matches any run of characters.
EXPERIMENTS = {
    "mnist-mlp": "one run per training (params.yaml `mlflow.experiment`), with its evaluation, "
    "report and promotion added to the same run",
    "monitoring": "one run per `python -m pipeline monitor` (`monitor.experiment`)",
}
TRAINING_PARAMS = {
    "*.*": "every key of params.yaml, flattened with dots (`train.lr`, `model.hidden`): "
    "[Parameters](parameters.md)",
}
TRAINING_METRICS = {
    "train_loss": "per epoch: mean training loss",
    "train_acc": "per epoch: training accuracy (on the augmented batches)",
    "valid_loss": "per epoch: validation loss",
    "valid_acc": "per epoch: validation accuracy",
    "lr": "per epoch: the learning rate",
    "epoch_seconds": "per epoch: wall time",
    "grad_norm/*": "per epoch: gradient norm of each layer's weights",
    "best_epoch": "the epoch of the kept checkpoint (lowest validation loss)",
    "best_valid_loss": "its validation loss",
    "best_valid_acc": "its validation accuracy",
    "train_seconds": "the whole training's wall time",
    "data_validation.expectations_*": "great-expectations checks passed and run (validate stage)",
    "test_accuracy": "evaluate: accuracy on the 10,000 test images",
    "test_accuracy_digit_*": "evaluate: accuracy on the test images of one digit",
    "test_errors": "evaluate: misclassified test images",
    "test_loss": "evaluate: test loss as trained (the training loss function)",
    "test_nll": "evaluate: test negative log-likelihood",
    "test_ece": "evaluate: expected calibration error (15 bins)",
    "valid_accuracy": "evaluate: validation accuracy of the kept checkpoint",
    "macro_*": "evaluate: macro-averaged F1, precision and recall",
    "robust_*_accuracy": "evaluate: test accuracy under one perturbation (shift, rotation, "
    "noise, dilation): [Evaluation](evaluation.md)",
    "system/*": "with `mlflow.system_metrics`: CPU, memory, disk and network, sampled",
}
TRAINING_TAGS = {
    "mlflow.*": "MLflow's own: run name, user, source, git branch and commit, the run's note "
    "(the model card)",
    "git_commit": "the commit the run trained",
    "data_digest": "one digest of the four raw MNIST files",
    "dataset.md5.*": "the MD5 of each raw file",
    "data_validation.success": "whether the validate stage's checks passed",
    "environment.*": "the machine and libraries: CPU model, family and flags, torch, numpy, MKL, "
    "oneDNN, Python, the kernel level and whether portable numerics were on",
    "model.sha256": "the SHA-256 of the checkpoint models/model.pt",
    "promotion.*": "promote's verdict: decision, reason, failed gates, per-digit p-values, and "
    "whether this run may move the champion, with why",
    "git.ref": "a ref that keeps the trained commit fetchable (`refs/mnist-mlp/runs/<run id>`)",
    "git.commit": "the commit that ref points to",
    "dvc_experiment": "the DVC experiment's name, when it ran as one",
}
MONITORING_PARAMS = {
    "alpha": "the family-wise error rate of the drift verdict (`monitor.alpha`)",
    "window": "which records were judged (days or last N)",
}
MONITORING_METRICS = {
    "drift": "1 when any test rejects after Holm's correction, else 0",
    "records": "how many records were judged",
    "p_*": "each test's adjusted p-value (classes, confidence, ood, features)",
    "mean_confidence": "the records' mean top probability",
    "ood_rate": "the share of records flagged off-distribution",
    "mmd2": "the squared MMD between the records' features and the reference's",
}
MONITORING_TAGS = {
    "mlflow.*": "MLflow's own",
    "verdict": "the one-line verdict",
    "window": "which records were judged",
    "model_id": "the logged model with the most records in the window",
}
REGISTERED_MODELS = {
    "mnist-mlp": "28x28 models (784 values per row), trained by `dvc repro` or the committee",
    "mnist-mlp-16x16": "16x16 models (`data.image_size: 16`): another input contract, so another "
    "name",
}
ALIASES = {"champion": "the version promote chose; what `models:/mnist-mlp@champion` serves"}
VERSION_TAGS = {
    "valid_accuracy": "validation accuracy when registered",
    "test_accuracy": "test accuracy, added by evaluate",
    "macro_f1": "macro-F1, added by evaluate",
    "data_digest": "the raw data's digest",
    "git_commit": "the commit trained",
    "dvc_experiment": "the DVC experiment's name, or `none`",
    "params_hash": "a hash of the run's params: equal params, equal hash",
    "input_shape": "`[N, 784]` or `[N, 256]`: what a row holds",
}
SECTIONS = {
    "Experiments": EXPERIMENTS,
    "Training runs: params": TRAINING_PARAMS,
    "Training runs: metrics": TRAINING_METRICS,
    "Training runs: tags": TRAINING_TAGS,
    "Monitoring runs: params": MONITORING_PARAMS,
    "Monitoring runs: metrics": MONITORING_METRICS,
    "Monitoring runs: tags": MONITORING_TAGS,
    "Registered models": REGISTERED_MODELS,
    "Aliases": ALIASES,
    "Model version tags": VERSION_TAGS,
}


def render() -> str:
    lines = [
        "<!-- Generated by docs/gen/gen_mlflow_doc.py; do not edit. -->",
        "",
        "# MLflow names",
        "",
        "Every name the pipeline writes into MLflow. `*` stands for any text; a given run has",
        "only the names its configuration produces. A test checks a real store against these",
        "patterns, so a new name cannot appear without a line here.",
    ]
    for title, names in SECTIONS.items():
        lines += ["", f"## {title}", "", "| name | meaning |", "| --- | --- |"]
        lines += [f"| `{name}` | {meaning} |" for name, meaning in names.items()]
    return "\n".join(lines) + "\n"


def undocumented(store: str) -> list[str]:
    """Each name in `store` that no pattern of its kind matches, as 'kind: name'."""
    import mlflow

    client = mlflow.MlflowClient(store)
    found: dict[str, set[str]] = {title: set() for title in SECTIONS}
    kinds = {
        "mnist-mlp": ("Training runs: params", "Training runs: metrics", "Training runs: tags"),
        "monitoring": (
            "Monitoring runs: params",
            "Monitoring runs: metrics",
            "Monitoring runs: tags",
        ),
    }
    for experiment in client.search_experiments():
        if experiment.name == "Default":
            continue
        found["Experiments"].add(experiment.name)
        params, metrics, tags = kinds.get(experiment.name, kinds["mnist-mlp"])
        for run in client.search_runs([experiment.experiment_id]):
            found[params].update(run.data.params)
            found[metrics].update(run.data.metrics)
            found[tags].update(run.data.tags)
    for model in client.search_registered_models():
        found["Registered models"].add(model.name)
        found["Aliases"].update(model.aliases)
        for version in client.search_model_versions(f"name='{model.name}'"):
            found["Model version tags"].update(version.tags)
    return [
        f"{title}: {name}"
        for title, names in found.items()
        for name in sorted(names)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in SECTIONS[title])
    ]


def main() -> int:
    args = sys.argv[1:]
    if "--store" in args:
        missing = undocumented(args[args.index("--store") + 1])
        for line in missing:
            print(f"undocumented MLflow name, {line}: add it to {Path(__file__).name}")
        return 1 if missing else 0
    return write_or_check(PAGE, render(), "--check" in args, __file__)


if __name__ == "__main__":
    sys.exit(main())
