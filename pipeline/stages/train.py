"""Stage `train`: fit the MLP on the train split, keep the best-valid-loss weights, track in MLflow.

After every epoch models/last.pt (pipeline/learner/resume.py) records everything needed to continue;
a killed run started again continues from there and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import artifacts
from pipeline.config import Params
from pipeline.data import labelled
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.learner import distributed
from pipeline.learner.augment import Augmentation
from pipeline.learner.distributed import World
from pipeline.learner.model import MLP, Architecture, save_checkpoint
from pipeline.learner.resume import (
    BestEpoch,
    TrainState,
    fingerprint,
    load_resume_state,
    save_state,
)
from pipeline.learner.trainer import EpochResult, Split, Trainer, diverged, resolve_device
from pipeline.paths import (
    RAW_DIR,
    STATS_FILE,
    TRAIN_INDEX_FILE,
    VALID_INDEX_FILE,
    Layout,
    member_layout,
)
from pipeline.progress import bar, log
from pipeline.registry import lineage, model_card, tracking
from pipeline.serving import registration, service


@dataclass(frozen=True)
class Inputs:
    train: Split
    valid: Split
    mean: float
    std: float
    dataset_md5: dict[str, str]  # file name -> md5, from checksums.json
    fingerprint: str
    checksums: artifacts.Checksums


def read_stats(image_size: int) -> tuple[float, float]:
    """The normalisation, checked to be for the model's image size and non-degenerate."""
    stats = artifacts.read_stats()
    if stats.get("image_size") != image_size:
        raise PipelineError(
            f"{STATS_FILE} is for image_size {stats.get('image_size')} but data.image_size is "
            f"{image_size}; run dvc repro stats"
        )
    if not stats.get("std", 0) > 0:
        raise PipelineError(
            f"{STATS_FILE} has std {stats.get('std')!r}; the images are constant, check data/raw"
        )
    return float(stats["mean"]), float(stats["std"])


def load_inputs(params: Params, device: torch.device) -> Inputs:
    size = params.data.image_size
    mean, std = read_stats(size)
    checksums = artifacts.read_checksums()
    dataset_md5 = {name: entry["md5"] for name, entry in checksums["files"].items()}
    # The labelled batches' files too (none without batches): the run's dataset.md5.* tags, which
    # promote compares with the champion's, and the resume fingerprint.
    dataset_md5 |= labelled.md5s(labelled.read_manifest())
    data = load_dataset(RAW_DIR, size, labelled.load())
    limit = len(data.train_labels)
    train_idx = torch.from_numpy(artifacts.read_index(TRAIN_INDEX_FILE, limit))
    valid_idx = torch.from_numpy(artifacts.read_index(VALID_INDEX_FILE, limit))

    def split(index: torch.Tensor) -> Split:
        return Split(data.train_images[index].to(device), data.train_labels[index].to(device))

    digest = fingerprint(params, dataset_md5, [STATS_FILE, TRAIN_INDEX_FILE, VALID_INDEX_FILE])
    return Inputs(split(train_idx), split(valid_idx), mean, std, dataset_md5, digest, checksums)


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def check_finite(result: EpochResult, trainer: Trainer) -> None:
    if not (
        math.isfinite(result.train_loss)
        and math.isfinite(result.valid_loss)
        and all_finite(trainer.model)
    ):
        steps = trainer.steps_per_epoch
        raise diverged(result.epoch, steps, steps, trainer.train.lr)


def epoch_line(r: EpochResult, epochs: int) -> str:
    return (
        f"epoch {r.epoch}/{epochs}: train loss {r.train_loss:.4f} acc {r.train_acc:.4f} | "
        f"valid loss {r.valid_loss:.4f} acc {r.valid_acc:.4f} | lr {r.lr:.3g} | {r.seconds:.1f} s"
    )


def build(params: Params, world: World) -> tuple[Inputs, Trainer]:
    """The data on the device and a freshly seeded model and trainer."""
    t = params.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = distributed.device_for(world, resolve_device(t.device))
    inputs = load_inputs(params, device)
    torch.manual_seed(t.seed)
    model = MLP(Architecture.from_params(params), inputs.mean, inputs.std).to(device)
    steps = -(-len(inputs.train.labels) // t.batch_size)
    return inputs, Trainer(model, t, Augmentation.from_params(params), steps, world)


def restore(trainer: Trainer, digest: str, world: World, last: Path) -> TrainState:
    """The interrupted run's state, loaded into `trainer`, when last.pt may be resumed; else a fresh
    one. Only rank 0 reads last.pt; it hands the state on to the other ranks."""
    saved = load_resume_state(last, digest) if world.main else None
    state = distributed.from_main(saved, world)
    if state is None:
        return TrainState(digest)
    trainer.load_state_dict(state.trainer)
    return state


@contextlib.contextmanager
def tracking_run(
    params: Params, inputs: Inputs, state: TrainState, world: World, member: int | None
) -> Iterator[None]:
    """Rank 0 logs into the interrupted run if it still exists, else a new one; other ranks log
    nothing."""
    if not world.main:
        state.mlflow_run_id = None
        yield
        return
    digest = lineage.data_digest(inputs.checksums, params.data.image_size)
    description = model_card.describe_run(params.flat(), digest, None)
    extra = {} if member is None else {"committee_member": str(member)}
    tags = tracking.run_tags(inputs.dataset_md5, digest, extra)
    with tracking.start_run(
        params.mlflow.experiment,
        params.flat(),
        tags,
        state.mlflow_run_id,
        description,
        params.mlflow.system_metrics,
    ) as run:
        if state.mlflow_run_id not in (None, run.info.run_id):
            log(
                f"MLflow run {state.mlflow_run_id} of the interrupted training is gone; logging "
                "to a new run"
            )
        state.mlflow_run_id = run.info.run_id
        splits = {"train": inputs.train, "valid": inputs.valid}
        for name, split in splits.items():
            lineage.log_split(
                name,
                split.images.cpu().numpy(),
                split.labels.cpu().numpy(),
                inputs.checksums,
                params.data.image_size,
            )
        yield


def record_epoch(state: TrainState, result: EpochResult, trainer: Trainer) -> None:
    """Add the epoch to the history; keep a CPU copy of its weights if its validation loss is the
    lowest yet."""
    state.history.append(result.history_row())
    state.grad_norms.append({"epoch": result.epoch, **result.grad_norms})
    if state.best is None or result.valid_loss < state.best.valid_loss:
        weights = {
            k: v.detach().to("cpu", copy=True) for k, v in trainer.evaluated.state_dict().items()
        }
        state.best = BestEpoch(result.epoch, result.valid_loss, result.valid_acc, weights)
    state.epoch = result.epoch
    state.trainer = trainer.state_dict()


def publish_epoch(state: TrainState, result: EpochResult, epochs: int, layout: Layout) -> None:
    """Rank 0 after each epoch: metrics to MLflow, then last.pt, the CSVs and one log line."""
    import mlflow

    metrics = {k: v for k, v in result.history_row().items() if k not in ("epoch", "seconds")}
    metrics["epoch_seconds"] = result.seconds
    metrics.update({f"grad_norm/{name}": v for name, v in result.grad_norms.items()})
    mlflow.log_metrics(metrics, step=result.epoch)
    save_state(layout.last, state)
    write_history(state, layout)
    log(epoch_line(result, epochs))


def train(
    params: Params,
    after_epoch: Callable[[int], None] | None = None,
    world: World = World(),
    member: int | None = None,
) -> TrainState:
    """Run the stage; `after_epoch(epoch)` runs once each epoch's state is saved (tests interrupt
    there).

    With several ranks (torchrun) each trains on its share of every batch; only rank 0 reads
    last.pt (and hands it on), writes files and talks to MLflow. `member` trains the committee
    member of that seed (committee/dvc.yaml): train.seed is replaced by it, its files go to
    committee/members/<seed>/ and its model is not registered (the committee stage registers the
    whole committee).
    """
    layout = Layout()
    if member is not None:
        params = params.model_copy(
            update={"train": params.train.model_copy(update={"seed": member})}
        )
        layout = member_layout(member)
    if world.main:
        tracking.configure()  # an unreachable server fails now, not after the training
    epochs = params.train.epochs
    inputs, trainer = build(params, world)
    state = restore(trainer, inputs.fingerprint, world, layout.last)
    with tracking_run(params, inputs, state, world, member):
        with bar(total=epochs, initial=state.epoch, desc="train", unit="epoch") as progress:
            for epoch in range(state.epoch + 1, epochs + 1):
                result = trainer.run_epoch(inputs.train, inputs.valid, epoch)
                check_finite(result, trainer)
                record_epoch(state, result, trainer)
                if world.main:
                    publish_epoch(state, result, epochs, layout)
                progress.update(1)
                if after_epoch:
                    after_epoch(epoch)
        if world.main:
            finish(params, trainer.model, inputs, state, layout, register=member is None)
    return state


def write_history(state: TrainState, layout: Layout) -> None:
    artifacts.write_history(state.history, layout.history)
    artifacts.write_grad_norms(state.grad_norms, layout.grad_norms)


def finish(
    params: Params, model: MLP, inputs: Inputs, state: TrainState, layout: Layout, register: bool
) -> None:
    """Best weights to models/model.pt and (unless a committee member's) the MLflow registry, then
    mark last.pt completed."""
    import mlflow

    best = state.best
    assert best is not None, "finish runs after at least one epoch"
    model = model.to("cpu")
    model.load_state_dict(best.state_dict)
    model.eval()
    save_checkpoint(
        layout.model,
        model,
        {
            "epoch": best.epoch,
            "valid_loss": best.valid_loss,
            "valid_accuracy": best.valid_accuracy,
            "loss": params.train.loss,
        },
    )
    lineage.log_checkpoint(layout.model)
    write_history(state, layout)
    mlflow.log_metrics(
        {
            "best_epoch": best.epoch,
            "best_valid_loss": best.valid_loss,
            "best_valid_acc": best.valid_accuracy,
            # Wall time of every epoch, a resumed run's included: here, since the files dvc.lock
            # hashes (train_history.csv, the report) hold none.
            "train_seconds": sum(row["seconds"] for row in state.history),
        }
    )
    if register:
        # The served model carries it, so a registered version is complete when train ends.
        loss = params.train.loss
        references = service.fit_references(
            model, loss, inputs.train.images.cpu(), inputs.valid.images.cpu()
        )
        references.save(layout)
        registration.log_and_register(model, loss, references, params, best.valid_accuracy)
    run = mlflow.active_run()
    assert run is not None, "finish runs inside tracking_run, which has opened the run"
    lineage.log_data_validation(
        {"train": len(inputs.train.labels), "valid": len(inputs.valid.labels)}
    )
    artifacts.write_run_reference(run.info.run_id, run.info.experiment_id, layout.run)
    state.completed = True
    save_state(layout.last, state)
    log(
        f"best epoch {best.epoch}: valid loss {best.valid_loss:.4f}, accuracy "
        f"{best.valid_accuracy:.4f}; saved {layout.model}, MLflow run {run.info.run_id}"
    )


def main(params: Params, member: int | None = None) -> None:
    """`member`: train the committee member of that seed (`python -m pipeline train --member N`)."""
    world = World.from_env()
    with distributed.process_group(
        world, distributed.device_for(world, resolve_device(params.train.device))
    ):
        train(params, world=world, member=member)
