"""Stage `committee` (committee/dvc.yaml): the members as one model, logged and registered.

Each member is an MLP that `python -m pipeline train --member SEED` trained (one DVC stage per seed
of committee.seeds). This stage puts their best checkpoints, in that order, into one committee
checkpoint (committee/models/model.pt, pipeline/learner/model.py's Committee: the log of the
members' mean softmax) and logs it to MLflow in a run of its own as one pt2 graph, registered like
any version: `evaluate --committee`, predict, promote and `mlflow models serve` then use it as they
use one MLP.
"""

from __future__ import annotations

import torch

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data import labelled
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.learner.losses import loss_fn
from pipeline.learner.model import (
    COMMITTEE_FORMAT,
    checkpoint_field,
    classifier_from_checkpoint,
    load_checkpoint,
    save_payload,
)
from pipeline.learner.scoring import score
from pipeline.paths import COMMITTEE, RAW_DIR, TRAIN_INDEX_FILE, VALID_INDEX_FILE, member_layout
from pipeline.progress import log
from pipeline.registry import lineage, model_card, tracking
from pipeline.serving import registration, service

# The committee's outputs are log-probabilities: logits to pipeline.learner.losses
LOSS = "cross_entropy"


def committee_payload(seeds: list[int]) -> dict:
    """The members' checkpoints as one COMMITTEE_FORMAT payload; every member must have been
    trained with cross-entropy, whose softmax the committee averages."""
    members = []
    for seed in seeds:
        path = member_layout(seed).model
        payload = load_checkpoint(path)
        loss = checkpoint_field(payload, "loss", path)
        if loss != LOSS:
            raise PipelineError(
                f"{path} was trained with the {loss} loss, but a committee averages softmax "
                f"outputs; retrain its members with -S train.loss={LOSS}"
            )
        members.append(payload)
    return {"format": COMMITTEE_FORMAT, "members": members, "seeds": list(seeds), "loss": LOSS}


def main(params: Params) -> None:
    import mlflow

    tracking.configure()  # an unreachable server fails before the work
    seeds = params.committee.seeds
    payload = committee_payload(seeds)
    committee = classifier_from_checkpoint(payload)
    data = load_dataset(RAW_DIR, committee.image_size, labelled.load())  # train.npy names them too
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, len(data.train_labels)))
    valid_images = data.train_images[valid_idx]
    valid = score(
        committee,
        valid_images,
        data.train_labels[valid_idx],
        loss_fn(LOSS),
        params.evaluate.batch_size,
    )
    # evaluate logs its metrics at this step; the members' epochs differ, so the committee has 0
    payload.update(epoch=0, valid_loss=valid.loss, valid_accuracy=valid.accuracy)
    save_payload(COMMITTEE.model, payload)
    train_idx = torch.from_numpy(artifacts.read_index(TRAIN_INDEX_FILE, len(data.train_labels)))
    references = service.fit_references(committee, LOSS, data.train_images[train_idx], valid_images)
    references.save(COMMITTEE)

    checksums = artifacts.read_checksums()
    dataset_md5 = {name: entry["md5"] for name, entry in checksums["files"].items()}
    dataset_md5 |= labelled.md5s(labelled.read_manifest())
    digest = lineage.data_digest(checksums, params.data.image_size)
    member_runs = [artifacts.read_run_reference(member_layout(s).run)["run_id"] for s in seeds]
    tags = tracking.run_tags(dataset_md5, digest, {"committee_member_runs": ",".join(member_runs)})
    description = (
        f"A committee of {len(seeds)} MLPs (seeds {', '.join(map(str, seeds))}) voting by their "
        "mean softmax output. " + model_card.describe_run(params.flat(), digest, None)
    )
    with tracking.start_run(
        params.mlflow.experiment, params.flat(), tags, None, description
    ) as run:
        mlflow.log_metrics({"valid_loss": valid.loss, "valid_acc": valid.accuracy})
        registration.log_and_register(committee, LOSS, references, params, valid.accuracy)
        artifacts.write_run_reference(run.info.run_id, run.info.experiment_id, COMMITTEE.run)
    log(
        f"committee of {len(seeds)} members: valid loss {valid.loss:.4f}, accuracy "
        f"{valid.accuracy:.4f}; saved {COMMITTEE.model}, MLflow run {run.info.run_id}"
    )
