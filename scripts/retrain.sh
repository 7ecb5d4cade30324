#!/usr/bin/env bash
# Scheduled retraining, run from the repository root by .github/workflows/retrain.yml and CI.
#
# First it asks what the world looks like now (docs/monitoring.md):
# 1. `python -m pipeline monitor` judges the champion's recent records ($MNIST_RECORDS) against
#    the reference stored with it. No records yet: it says so, and the job goes on.
# 2. `python -m pipeline labelled add` takes new labelled batches from $MNIST_LABELLED (if set)
#    as a new dataset version: data/labelled.json and data/labelled.dvc are committed on this
#    branch, so the retrain below is a clean commit of the main line (docs/data.md).
# 3. Drift and no new labelled data: the job fails with the verdict, so the schedule surfaces it,
#    and nothing is retrained or promoted: the champion is kept. Label some of what the service
#    was asked (MNIST_RECORDS_PIXELS=1 keeps the pixels) and rerun.
#
# Otherwise every run trains a new model, even when nothing changed: a retrain that silently
# reuses the last model is no retrain, and with portable numerics the same commit, pins and data
# give the same model bytes on any CPU (docs/training.md, Determinism), so a retrain of an
# unchanged commit re-proves the committed result on whatever runner it gets, for the cost of one
# training (`dvc metrics diff` then shows no change). Stages before train run only when their
# inputs changed. The gate still scores on the unchanged MNIST test set.
# The promote stage decides against the registry at $MLFLOW_TRACKING_URI (else the repository's
# mlflow.db) and reports/promotion.json says why. It moves @champion only when this is the main
# line, a clean commit at the tip of promote.main_branch (pipeline/registry/mainline.py); the
# data/upstream.json this script refreshes does not count as a change. Elsewhere it says
# `would promote` or `would keep`.
#
# With a DVC remote configured (dvc remote add -d ...), the last results are pulled first and
# the new ones pushed at the end. A custom dataset's sources are checked for changed files first
# (python -m pipeline upstream refreshes data/upstream.json, which the download stage depends on).
#
# RETRAIN_GIT_REMOTE=origin also records what was trained as a git branch retrain/<time>-<run>
# pushed there, after `dvc push` (so the DVC remote has the data before a ref points at it), and
# tags the MLflow run with it (python -m pipeline gitref; docs/retrain.md); a new dataset
# version's commit is pushed to promote.main_branch there too. Unset: no git writes but the
# local dataset-version commit.
set -euo pipefail
cd "$(dirname "$0")/.."

remote="$(dvc remote list)"
if [ -n "${RETRAIN_GIT_REMOTE:-}" ]; then
    git remote get-url "$RETRAIN_GIT_REMOTE" >/dev/null 2>&1 \
        || { echo "error: RETRAIN_GIT_REMOTE=$RETRAIN_GIT_REMOTE names no git remote; add it (git remote add $RETRAIN_GIT_REMOTE URL) or unset RETRAIN_GIT_REMOTE" >&2; exit 1; }
    [ -n "$remote" ] \
        || { echo "error: RETRAIN_GIT_REMOTE is set but no DVC remote is configured, so the branch would point at data nobody can pull; add one (dvc remote add -d NAME URL) or unset RETRAIN_GIT_REMOTE" >&2; exit 1; }
fi
if [ -n "$remote" ]; then
    echo "== dvc pull (remote: ${remote%%[[:space:]]*})"
    dvc pull --allow-missing
fi

if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
    echo "== MLflow: tracking server from MLFLOW_TRACKING_URI"
else
    echo "== MLflow: local store sqlite:///$PWD/mlflow.db (set MLFLOW_TRACKING_URI to promote into a shared registry)"
fi

echo "== monitor (python -m pipeline monitor)"
monitor_status=0
python -m pipeline monitor || monitor_status=$?
[ "$monitor_status" -eq 0 ] || [ "$monitor_status" -eq 3 ] || exit "$monitor_status"
verdict="$(python -c 'import json; r = json.load(open("reports/monitoring.json")); print(r["summary"])')"

new_data=""
if [ -n "${MNIST_LABELLED:-}" ]; then
    echo "== labelled data (python -m pipeline labelled add, from MNIST_LABELLED)"
    labelled_status=0
    python -m pipeline labelled add || labelled_status=$?
    case "$labelled_status" in
        0) new_data=yes ;;
        3) ;;
        *) exit "$labelled_status" ;;
    esac
else
    echo "== labelled data: MNIST_LABELLED is not set, so there is no inbox of new labelled batches"
fi
if [ "$monitor_status" -eq 3 ] && [ -z "$new_data" ]; then
    message="error: the monitor found drift and there is no new labelled data, so the champion is kept and nothing is retrained ($verdict). Label a sample of the recent inputs (MNIST_RECORDS_PIXELS=1 records their pixels) into a batch under \$MNIST_LABELLED and rerun; reports/monitoring.html shows the shift"
    echo "$message" >&2
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        printf '## Drift: the champion is kept\n\n%s\n' "$message" >>"$GITHUB_STEP_SUMMARY"
    fi
    exit 1
fi
if [ -n "$new_data" ]; then
    echo "== a new dataset version: dvc add data/labelled, and a commit of its manifest"
    dvc add -q data/labelled
    git add data/labelled.json data/labelled.dvc
    batches="$(python -c 'import json; m = json.load(open("data/labelled.json")); print(", ".join(b["name"] for b in m["batches"]))')"
    git commit -q -m "data: labelled batches $batches" -- data/labelled.json data/labelled.dvc
fi

echo "== upstream data (python -m pipeline upstream)"
python -m pipeline upstream

# A retrain always opens a new MLflow run, so an unchanged run reference means train did not run.
run_before="$(cat models/mlflow_run.json 2>/dev/null || true)"
echo "== dvc repro"
# --no-run-cache: a stage whose inputs changed really runs, never restores an older result.
dvc repro --no-run-cache
if [ "$(cat models/mlflow_run.json 2>/dev/null || true)" = "$run_before" ]; then
    echo "== nothing train depends on changed; retraining anyway (dvc repro --force --downstream train)"
    dvc repro --force --downstream train
fi

# The root pipeline's metrics only: committee/dvc.yaml's exist after `make committee` alone, and
# DVC warns about every declared metrics file it cannot read.
root_metrics=(reports/metrics.json reports/data_validation.json)
echo "== dvc metrics diff (last commit -> this run)"
dvc metrics diff --targets "${root_metrics[@]}"
promotion="$(python -c 'import json; r = json.load(open("reports/promotion.json")); print(r["decision"] + ": " + r["reason"])')"
echo "== promotion: $promotion"
echo "== monitor before this retrain: $verdict"

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
        echo "## Metrics (last commit -> this run)"
        dvc metrics diff --md --targets "${root_metrics[@]}"
        echo
        echo "**Promotion** $promotion"
        echo
        echo "**Monitor before this retrain** $verdict"
    } >>"$GITHUB_STEP_SUMMARY"
fi

if [ -n "$remote" ]; then
    echo "== dvc push"
    dvc push
fi
if [ -n "${RETRAIN_GIT_REMOTE:-}" ] && [ -n "$new_data" ]; then
    main_branch="$(python -c 'from pipeline.config import load_params; print(load_params().promote.main_branch)')"
    echo "== the new dataset version to $RETRAIN_GIT_REMOTE $main_branch"
    git push "$RETRAIN_GIT_REMOTE" "HEAD:refs/heads/$main_branch"
fi
if [ -n "${RETRAIN_GIT_REMOTE:-}" ]; then
    echo "== git branch of this retrain (python -m pipeline gitref --remote $RETRAIN_GIT_REMOTE)"
    python -m pipeline gitref --remote "$RETRAIN_GIT_REMOTE"
fi
