"""Data-parallel training: two gloo processes on CPU give what one process gives, to ~1e-5.

CUDA variants run where torch sees GPUs and are skipped, with the reason, everywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.learner import distributed
from pipeline.learner.augment import Augmentation
from pipeline.learner.distributed import World
from pipeline.learner.model import MLP, Architecture, load_checkpoint
from pipeline.learner.trainer import Split, Trainer
from pipeline.paths import LAST_CHECKPOINT_FILE, MLFLOW_RUN_FILE, MODEL_FILE, TRAIN_HISTORY_FILE
from pipeline.registry import tracking
from tests.helpers import TINY_PIPELINE, free_port, read_history, synthetic_digits

# Adam on two-process gradients summed in another order: measured differences are ~1e-7.
TOLERANCE = 1e-5
EPOCHS = 3
# Batch 33 splits 17/16 between two ranks, and 500 images end in a batch of 5 (3/2): the uneven
# shares must still give the single-process gradient. Every augmentation draws random numbers.
PARAMS = {
    "model": {"hidden": [32, 16]},
    "augment": {"scale": 0.1, "elastic_alpha": 8.0, "interpolation": "bilinear"},
    "train": {
        "batch_size": 33,
        "lr": 0.003,
        "epochs": EPOCHS,
        "lr_schedule": "onecycle",
        "threads": 1,
    },
}


def device_or_skip(name: str, processes: int = 1) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(
                "CUDA variant: torch.cuda.is_available() is False on this machine (CPU-only CI)"
            )
        if torch.cuda.device_count() < processes:
            pytest.skip(
                f"CUDA variant needs {processes} GPUs, one per nccl rank; "
                f"torch sees {torch.cuda.device_count()}"
            )
    return torch.device(name)


def fit(world: World, device: torch.device) -> dict:
    """EPOCHS epochs of the Trainer on fixed synthetic data; the history and final weights."""
    params = parse_params(PARAMS)
    x, y = synthetic_digits(500, seed=7)
    vx, vy = synthetic_digits(100, seed=8)
    train = Split(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))
    valid = Split(torch.from_numpy(vx).to(device), torch.from_numpy(vy).long().to(device))
    torch.manual_seed(params.train.seed)
    model = MLP(Architecture.from_params(params), 0.2, 0.3).to(device)
    steps = -(-len(train.labels) // params.train.batch_size)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps, world)
    history = []
    for epoch in range(1, EPOCHS + 1):
        r = trainer.run_epoch(train, valid, epoch)
        history.append(
            [r.train_loss, r.train_acc, r.valid_loss, r.valid_acc, r.lr, *r.grad_norms.values()]
        )
    return {"history": history, "weights": {k: v.cpu() for k, v in model.state_dict().items()}}


def worker(rank: int, size: int, port: int, device_name: str, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(size),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    world = World.from_env()
    device = distributed.device_for(world, torch.device(device_name))
    with distributed.process_group(world, device):
        result = fit(world, device)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def compare(single: dict, parallel: dict) -> float:
    """Largest absolute difference over every history value and weight; asserts the shapes agree."""
    worst = float(np.abs(np.array(single["history"]) - np.array(parallel["history"])).max())
    assert single["weights"].keys() == parallel["weights"].keys()
    for key, value in single["weights"].items():
        worst = max(worst, float((value - parallel["weights"][key]).abs().max()))
    return worst


@pytest.mark.slow  # two fresh processes importing torch: 10-30 s
@pytest.mark.parametrize("device_name", ["cpu", "cuda"])
def test_two_processes_train_like_one(device_name: str, tmp_path: Path) -> None:
    device = device_or_skip(device_name, processes=2)
    mp.spawn(worker, args=(2, free_port(), device_name, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["weights"].items():  # DDP keeps the replicas identical
        assert torch.equal(value, ranks[1]["weights"][key]), key
    assert ranks[0]["history"] == ranks[1]["history"]  # losses and hits are summed over ranks

    single = fit(World(), device)
    worst = compare(single, ranks[0])
    print(
        f"largest difference, two processes vs one: {worst:.1e}"
    )  # docs/scaling.md quotes it (pytest -s)
    assert worst < TOLERANCE
    assert (
        single["history"][-1][0] < 0.8 * single["history"][0][0]
    )  # it did learn: the match means something


def test_rows_give_each_rank_its_share_of_every_batch() -> None:
    count, batch = 100, 33  # batches of 33, 33, 33, 1
    shares = [distributed.rows(count, batch, World(rank, 3)) for rank in range(3)]
    assert sorted(torch.cat(shares).tolist()) == list(range(count))
    for rank, share in enumerate(shares):
        sizes = distributed.local_sizes(count, batch, World(rank, 3))
        assert sizes == [11, 11, 11, 1 if rank == 0 else 0]
        assert sum(sizes) == len(share)
        assert torch.equal(share[:11], torch.arange(rank, 33, 3))  # rows r, r + W, ... of batch 1
    assert torch.equal(distributed.rows(count, batch, World()), torch.arange(count))


def test_world_comes_from_torchruns_variables() -> None:
    assert World.from_env({}) == World(0, 1, 0)
    assert World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    assert World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).main is False
    with pytest.raises(
        PipelineError, match="RANK=4 does not fit WORLD_SIZE=4; launch with torchrun"
    ):
        World.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(PipelineError, match="must be integers"):
        World.from_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("device_name", ["cpu", "cuda"])
def test_trainer_keeps_data_and_model_on_the_device_and_learns_with_bf16(device_name: str) -> None:
    device = device_or_skip(device_name)
    params = parse_params({**PARAMS, "train": {**PARAMS["train"], "amp": True}})
    x, y = synthetic_digits(300, seed=9)
    data = Split(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))
    torch.manual_seed(0)
    model = MLP(Architecture.from_params(params), 0.2, 0.3).to(device)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps_per_epoch=10)
    assert trainer.device.type == device.type
    before, _ = trainer.evaluate(data)
    results = [trainer.run_epoch(data, data, epoch) for epoch in range(1, 4)]
    assert results[-1].valid_loss < 0.7 * before
    assert all(p.device.type == device.type for p in model.parameters())
    assert data.images.device.type == device.type  # nothing moved it back per batch


@pytest.mark.slow
def test_torchrun_train_stage_matches_one_process_and_only_rank_0_writes(
    run_stages, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    run_stages("download", "stats", "split")
    monkeypatch.delenv("MNIST_MIRROR")
    params = {**TINY_PIPELINE, **{k: {**TINY_PIPELINE.get(k, {}), **v} for k, v in PARAMS.items()}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "pipeline", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    for epoch in range(1, EPOCHS + 1):  # one line per epoch: only rank 0 logs
        assert launched.stderr.count(f"epoch {epoch}/{EPOCHS}:") == 1, launched.stderr
    ddp_history = read_history(TRAIN_HISTORY_FILE)
    ddp_weights = load_checkpoint(MODEL_FILE)["state_dict"]
    ddp_run = json.loads(MLFLOW_RUN_FILE.read_text())["run_id"]
    shutil.copy(LAST_CHECKPOINT_FILE, "ddp-last.pt")

    single = subprocess.run(
        [sys.executable, "-m", "pipeline", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    history = read_history(TRAIN_HISTORY_FILE)
    assert [row["epoch"] for row in history] == [row["epoch"] for row in ddp_history]
    for ours, theirs in zip(history, ddp_history, strict=True):
        for column in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr"):
            assert float(ours[column]) == pytest.approx(float(theirs[column]), abs=TOLERANCE), (
                column
            )
    for key, value in load_checkpoint(MODEL_FILE)["state_dict"].items():
        assert torch.allclose(value, ddp_weights[key], atol=TOLERANCE), key

    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.get_experiment_by_name(parse_params(params).mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and ddp_run in {
        r.info.run_id for r in runs
    }  # one per training, none per rank
    assert all(r.info.status == "FINISHED" for r in runs)
    assert torch.load("ddp-last.pt", weights_only=True)["completed"] is True
