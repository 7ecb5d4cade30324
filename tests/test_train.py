"""The train stage on tiny synthetic data: outputs, determinism, resume, divergence, MLflow."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import artifacts, paths
from pipeline.config import Params, parse_params
from pipeline.data import fetch
from pipeline.data.loading import load_dataset
from pipeline.errors import PipelineError
from pipeline.learner.augment import Augmentation
from pipeline.learner.model import MLP, Architecture, load_checkpoint, model_from_checkpoint
from pipeline.learner.trainer import Split, Trainer
from pipeline.stages import train
from tests.helpers import read_history, read_rows, synthetic_digits

SMALL = {
    "model": {"hidden": [32, 16]},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "threads": 1},
}


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def small_params(**sections: dict):
    return parse_params(_merge(SMALL, sections))


@pytest.fixture
def inputs(mlflow_workdir: Path, synthetic_mirror: Path) -> Path:
    """mlflow_workdir with data/raw (real download stage), data/stats.json and data/split as the
    contracts say."""
    fetch.download(
        parse_params({"data": {"name": "custom"}}),
        paths.RAW_DIR,
        {"MNIST_MIRROR": str(synthetic_mirror)},
    )
    pixels = load_dataset(paths.RAW_DIR, 28).train_images.double() / 255
    artifacts.write_stats(
        {
            "mean": pixels.mean().item(),
            "std": pixels.std(correction=0).item(),
            "image_size": 28,
            "count": len(pixels),
        }
    )
    order = np.random.default_rng(0).permutation(len(pixels))
    artifacts.write_index(paths.VALID_INDEX_FILE, np.sort(order[:100]).astype(np.int64))
    artifacts.write_index(paths.TRAIN_INDEX_FILE, np.sort(order[100:]).astype(np.int64))
    return mlflow_workdir


def test_stage_writes_its_outputs_and_learns(inputs: Path) -> None:
    state = train.train(small_params())
    history = read_rows(paths.TRAIN_HISTORY_FILE)
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    assert tuple(history[0]) == artifacts.HISTORY_COLUMNS
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    norms = read_rows(paths.GRAD_NORMS_FILE)
    assert list(norms[0]) == ["epoch", "hidden.0", "hidden.2", "output"]
    assert all(float(v) > 0 for row in norms for v in row.values())

    payload = torch.load(paths.MODEL_FILE, weights_only=True)
    best = min(history, key=lambda row: float(row["valid_loss"]))
    assert payload["epoch"] == int(best["epoch"]) == state.best.epoch
    assert payload["valid_loss"] == pytest.approx(float(best["valid_loss"]))
    assert payload["loss"] == "cross_entropy"
    model = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))
    for key, value in state.best.state_dict.items():
        assert torch.equal(model.state_dict()[key], value)
    assert json.loads(paths.MLFLOW_RUN_FILE.read_text()).keys() == {"run_id", "experiment_id"}
    assert torch.load(paths.LAST_CHECKPOINT_FILE, weights_only=True)["completed"] is True


def test_two_runs_give_identical_results(inputs: Path) -> None:
    """The same bytes in every file dvc.lock hashes: no wall time in train_history.csv, no temp
    name in model.pt; only mlflow_run.json names the new run."""
    params = small_params(model={"dropout": 0.2}, augment={"scale": 0.1, "elastic_alpha": 8.0})
    files = (paths.MODEL_FILE, paths.TRAIN_HISTORY_FILE, paths.GRAD_NORMS_FILE)
    first = train.train(params)
    written = {path: path.read_bytes() for path in files}
    run = paths.MLFLOW_RUN_FILE.read_text()
    second = train.train(params)  # last.pt is marked completed, so this starts fresh
    assert {path: path.read_bytes() for path in files} == written
    assert paths.MLFLOW_RUN_FILE.read_text() != run
    for key, value in first.trainer["model"].items():
        assert torch.equal(second.trainer["model"][key], value)


def test_train_seed_changes_the_result(inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed repeats a run (test above); another seed gives other initial weights,
    final weights and metrics."""
    initial = []

    class Recording(train.Trainer):
        def __init__(self, model: MLP, *args, **kwargs) -> None:
            initial.append(model.output.weight.detach().clone())
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Recording)
    first = train.train(small_params(train={"epochs": 1, "seed": 1}))
    history = read_history(paths.TRAIN_HISTORY_FILE)
    second = train.train(small_params(train={"epochs": 1, "seed": 2}))
    assert not torch.equal(*initial)
    assert read_history(paths.TRAIN_HISTORY_FILE) != history
    assert not torch.equal(
        first.trainer["model"]["output.weight"], second.trainer["model"]["output.weight"]
    )


def test_train_seed_drives_shuffling_augmentation_and_dropout() -> None:
    """From the same initial weights, one epoch with another seed ends elsewhere; the same seed
    gives the same weights, bit for bit."""
    x, y = synthetic_digits(200, seed=4)
    data = Split(torch.from_numpy(x), torch.from_numpy(y).long())

    def one_epoch(seed: int) -> dict[str, torch.Tensor]:
        params = small_params(model={"dropout": 0.2}, augment={"scale": 0.1}, train={"seed": seed})
        torch.manual_seed(0)
        model = MLP(Architecture.from_params(params), 0.2, 0.3)
        trainer = Trainer(model, params.train, Augmentation.from_params(params), -(-200 // 32))
        trainer.train_epoch(data, 1)
        return model.state_dict()

    first, again, other = one_epoch(1), one_epoch(1), one_epoch(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["output.weight"], other["output.weight"])


class Interrupt(Exception):
    pass


def stop_after(stop_epoch: int):
    def hook(epoch: int) -> None:
        if epoch == stop_epoch:
            raise Interrupt

    return hook


def makefile_overrides(name: str) -> dict[str, dict]:
    """A Makefile variable of `-S section.key=value` overrides (`make best`'s BEST_PARAMS), with
    the variables it names expanded, as params sections."""
    text = (Path(__file__).parents[1] / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) = (.*)$", text, re.M))
    line = variables[name]
    while "$(" in line:
        line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line)
    words = shlex.split(line)
    sections: dict[str, dict] = {}
    for flag, setting in zip(words[::2], words[1::2], strict=True):
        assert flag == "-S", line
        key, value = setting.split("=", 1)
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = yaml.safe_load(value)
    return sections


def best_recipe_at_small_scale() -> Params:
    """`make best`'s recipe (augmentation, dropout, schedule, threads, depth) on a net and a run
    small enough for a test: only widths, epochs and batch size shrink."""
    best = makefile_overrides("BEST_PARAMS")
    assert best["train"]["epochs"] > 3 and best["train"]["threads"] > 1
    best["model"]["hidden"] = [32] * len(best["model"]["hidden"])
    best["train"].update(epochs=3, batch_size=32)
    return small_params(**best)


@pytest.mark.parametrize(
    "recipe",
    [
        # Dropout and a one-cycle schedule: the global RNG and the scheduler must be restored too.
        lambda: small_params(model={"dropout": 0.1}, train={"lr_schedule": "onecycle"}),
        # A 90-minute `make best` resumes through the same code with its own params: elastic and
        # affine draws, cosine schedule, dropout and two threads.
        best_recipe_at_small_scale,
    ],
    ids=["onecycle-dropout", "make-best-recipe"],
)
def test_resume_after_interruption_equals_uninterrupted_run(
    inputs: Path, capsys: pytest.CaptureFixture, recipe
) -> None:
    params = recipe()
    whole = train.train(params)
    whole_history = read_history(paths.TRAIN_HISTORY_FILE)
    whole_run = json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"]
    for path in (paths.MODEL_FILE, paths.TRAIN_HISTORY_FILE, paths.MLFLOW_RUN_FILE):
        path.unlink()  # as dvc does with a stage's outs before running it

    with pytest.raises(Interrupt):
        train.train(params, after_epoch=stop_after(1))
    interrupted = torch.load(paths.LAST_CHECKPOINT_FILE, weights_only=True)
    assert interrupted["epoch"] == 1 and interrupted["mlflow_run_id"] not in (None, whole_run)
    assert not paths.MODEL_FILE.exists()
    capsys.readouterr()
    resumed = train.train(params)
    # A fresh start would give the same weights too (same seed): these lines tell resuming apart.
    assert "resuming from models/last.pt after epoch 1\n" in capsys.readouterr().err
    assert resumed.mlflow_run_id == interrupted["mlflow_run_id"]

    assert read_history(paths.TRAIN_HISTORY_FILE) == whole_history
    for key, value in whole.trainer["model"].items():
        assert torch.equal(resumed.trainer["model"][key], value), key
    for key, value in whole.best.state_dict.items():
        assert torch.equal(load_checkpoint(paths.MODEL_FILE)["state_dict"][key], value), key
    resumed_run = json.loads(paths.MLFLOW_RUN_FILE.read_text())["run_id"]
    assert resumed_run != whole_run and resumed_run == resumed.mlflow_run_id

    from mlflow import MlflowClient

    steps = [m.step for m in MlflowClient().get_metric_history(resumed_run, "valid_loss")]
    assert steps == [1, 2, 3]  # the interrupted run was reopened and continued, not duplicated


def test_changed_params_start_fresh(inputs: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(Interrupt):
        train.train(small_params(), after_epoch=stop_after(1))
    state = train.train(small_params(train={"lr": 0.002}))
    assert "other params or data; starting fresh" in capsys.readouterr().err
    assert state.mlflow_run_id and len(state.history) == 3


def test_unreadable_last_checkpoint_starts_fresh(
    inputs: Path, capsys: pytest.CaptureFixture
) -> None:
    paths.LAST_CHECKPOINT_FILE.parent.mkdir()
    paths.LAST_CHECKPOINT_FILE.write_bytes(b"half a file")
    state = train.train(small_params(train={"epochs": 1}))
    assert "last.pt is unreadable" in capsys.readouterr().err and state.completed


def test_divergence_stops_with_one_clear_message(inputs: Path) -> None:
    with pytest.raises(PipelineError) as error:
        train.train(
            small_params(
                train={
                    "lr": 10.0,
                    "optimizer": "sgd",
                    "momentum": 0.9,
                    "weight_decay": 10.0,
                    "epochs": 2,
                }
            )
        )
    message = str(error.value)
    assert "non-finite loss at epoch 1, step" in message and "lower train.lr" in message
    assert "\n" not in message
    assert not paths.MODEL_FILE.exists()


def test_divergence_never_replaces_the_saved_state(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN after a good epoch leaves last.pt at that epoch, with finite weights."""
    original = train.Trainer.train_epoch

    def poisoned(self, data, epoch):
        if epoch == 2:
            with torch.no_grad():
                self.model.output.weight.fill_(float("nan"))
        return original(self, data, epoch)

    monkeypatch.setattr(train.Trainer, "train_epoch", poisoned)
    with pytest.raises(PipelineError, match="epoch 2, step 1 of"):
        train.train(small_params())
    saved = torch.load(paths.LAST_CHECKPOINT_FILE, weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["best"]["state_dict"].values())


def test_mlflow_run_holds_params_metrics_tags_and_model(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("DVC_EXP_NAME", "try-1")
    params = small_params(train={"epochs": 2})
    train.train(params)
    reference = json.loads(paths.MLFLOW_RUN_FILE.read_text())
    client = MlflowClient()
    run = client.get_run(reference["run_id"])
    assert run.info.experiment_id == reference["experiment_id"]
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.hidden"] == "[32, 16]"
    assert set(params.flat()) <= set(run.data.params)
    md5 = json.loads(paths.CHECKSUMS_FILE.read_text())["files"]
    assert (
        run.data.tags["dataset.md5.train-images-idx3-ubyte.gz"]
        == md5["train-images-idx3-ubyte.gz"]["md5"]
    )
    assert run.data.tags["dvc_experiment"] == "try-1" and run.info.run_name == "try-1"
    assert "git_commit" in run.data.tags
    checkpoint = hashlib.sha256(paths.MODEL_FILE.read_bytes()).hexdigest()
    assert run.data.tags["model.sha256"] == checkpoint, "the file this run trained, by hash"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_acc")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm/hidden.0")] == [
        1,
        2,
    ]
    # Wall time lives here, not in the files dvc.lock hashes.
    epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
    assert run.data.metrics["train_seconds"] == pytest.approx(sum(m.value for m in epochs))

    (version,) = client.search_model_versions(f"name='{params.mlflow.registered_model}'")
    assert version.run_id == run.info.run_id
    served = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}/{version.version}")
    pixels = np.random.default_rng(0).random((7, 784), dtype=np.float32)
    expected = model_from_checkpoint(load_checkpoint(paths.MODEL_FILE))(torch.from_numpy(pixels))
    answers = served.predict(pixels.tolist())
    np.testing.assert_allclose(
        [a["probabilities"] for a in answers], expected.softmax(1).detach().numpy(), atol=1e-6
    )
    assert [a["digit"] for a in answers] == expected.argmax(1).tolist()
    assert all(a["ood"] is not None for a in answers), "the version carries its reference"
    assert paths.OOD_REFERENCE_FILE.exists(), "train writes the reference it registers"


def test_unreachable_tracking_server_fails_before_training(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(PipelineError, match="unreachable"):
        train.train(small_params())
    assert not paths.LAST_CHECKPOINT_FILE.exists()


def test_a_deleted_experiment_fails_before_training_saying_how_to_restore_it(
    inputs: Path,
) -> None:
    import mlflow

    from pipeline.registry import tracking

    params = small_params()
    tracking.configure()
    experiment = mlflow.create_experiment(params.mlflow.experiment)
    mlflow.MlflowClient().delete_experiment(experiment)
    uri = tracking.tracking_uri()
    with pytest.raises(PipelineError) as deleted:
        train.train(params)
    assert str(deleted.value) == (
        f"MLflow experiment {params.mlflow.experiment!r} is deleted in {uri}; restore it "
        f"(MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment}) or "
        "set another mlflow.experiment in params.yaml"
    )
    assert not paths.LAST_CHECKPOINT_FILE.exists()


def test_missing_inputs_name_the_stage_to_run(inputs: Path) -> None:
    paths.STATS_FILE.unlink()
    with pytest.raises(
        PipelineError, match=r"data/stats.json is missing; run the stats stage first"
    ):
        train.train(small_params())


@pytest.mark.parametrize(
    "train_params",
    [
        {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "lr_schedule": "cosine"},
        {"lr_schedule": "onecycle", "weight_decay": 1e-4},
        {"amp": True},
    ],
    ids=["sgd-cosine", "adam-onecycle", "amp"],
)
def test_optimisers_schedules_and_amp_learn(train_params: dict) -> None:
    params = small_params(train={**train_params, "epochs": 4})
    x, y = synthetic_digits(400, seed=4)
    data = Split(torch.from_numpy(x), torch.from_numpy(y).long())
    torch.manual_seed(0)
    model = MLP(Architecture.from_params(params), 0.2, 0.3)
    steps = -(-len(data.labels) // params.train.batch_size)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), steps)
    before, _ = trainer.evaluate(data)
    results = [trainer.run_epoch(data, data, epoch) for epoch in range(1, 5)]
    assert results[-1].valid_loss < 0.5 * before
    lrs = [r.lr for r in results]
    if params.train.lr_schedule == "cosine":
        assert (
            lrs[0] == params.train.lr and lrs == sorted(lrs, reverse=True) and trainer.lr() < 1e-6
        )
    if params.train.lr_schedule == "onecycle":
        assert (
            lrs[0] == pytest.approx(params.train.lr / 25)
            and max(lrs) > lrs[0]
            and trainer.lr() < lrs[0]
        )


@pytest.mark.parametrize(
    ("optimizer", "momentum"), [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)], ids=str
)
def test_onecycle_moves_the_lr_and_keeps_the_configured_momentum(
    optimizer: str, momentum: float
) -> None:
    """torch's OneCycleLR cycles momentum (0.95 -> 0.85) by default, which would overwrite
    train.momentum and Adam's beta1; here they hold through the epoch."""
    params = small_params(
        train={"optimizer": optimizer, "momentum": momentum, "lr_schedule": "onecycle"}
    )
    x, y = synthetic_digits(200, seed=4)
    torch.manual_seed(0)
    model = MLP(Architecture.from_params(params), 0.2, 0.3)
    trainer = Trainer(model, params.train, Augmentation.from_params(params), -(-200 // 32))
    trainer.train_epoch(Split(torch.from_numpy(x), torch.from_numpy(y).long()), 1)
    group = trainer.optimizer.param_groups[0]
    if optimizer == "sgd":
        assert group["momentum"] == momentum
    else:
        assert group["betas"] == (0.9, 0.999)  # Adam's defaults


def test_momentum_with_adam_is_refused(inputs: Path) -> None:
    with pytest.raises(PipelineError, match="train.momentum applies to sgd only"):
        train.train(small_params(train={"momentum": 0.9}))


def test_cuda_request_without_cuda_is_refused(inputs: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip(
            "checks the refusal of train.device=cuda, which only happens where CUDA is absent"
        )
    with pytest.raises(PipelineError, match="no CUDA device"):
        train.train(small_params(train={"device": "cuda"}))


def test_weight_average_moves_each_weight_a_share_towards_the_trained_one() -> None:
    from pipeline.learner.ema import WeightAverage

    torch.manual_seed(0)
    model = MLP(Architecture(28, (8,)), 0.1, 0.3)
    average = WeightAverage(model, decay=0.75)
    start = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()
    for key, value in model.state_dict().items():
        expected = 0.75 * start[key] + 0.25 * value if key not in ("mean", "std") else start[key]
        torch.testing.assert_close(average.model.state_dict()[key], expected)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_ema_weights_are_validated_kept_and_resumed_exactly(inputs: Path) -> None:
    """With train.ema_decay the best epoch's saved weights are the average's, not the trained
    ones; a run interrupted after epoch 1 ends with the same weights and average, bit for bit."""
    params = small_params(model={"dropout": 0.1}, train={"ema_decay": 0.9})
    last: list[dict] = []  # the trainer state last.pt holds after epoch 3 (finish then loads
    # the best weights into the live model)

    def keep_last(epoch: int) -> None:
        if epoch == 3:
            last.append(torch.load(paths.LAST_CHECKPOINT_FILE, weights_only=True)["trainer"])

    whole = train.train(params, after_epoch=keep_last)
    whole_model = load_checkpoint(paths.MODEL_FILE)["state_dict"]
    whole_history = read_history(paths.TRAIN_HISTORY_FILE)
    ema, trained = last[0]["ema"], last[0]["model"]
    assert set(ema) == set(trained)
    assert not torch.equal(ema["output.weight"], trained["output.weight"])
    saved = whole_model["output.weight"]
    assert torch.equal(saved, whole.best.state_dict["output.weight"])
    if whole.best.epoch == 3:  # the last epoch's average, not its trained weights
        assert torch.equal(saved, ema["output.weight"])
    for path in (paths.MODEL_FILE, paths.TRAIN_HISTORY_FILE, paths.MLFLOW_RUN_FILE):
        path.unlink()
    with pytest.raises(Interrupt):
        train.train(params, after_epoch=stop_after(1))
    resumed = train.train(params, after_epoch=keep_last)
    assert read_history(paths.TRAIN_HISTORY_FILE) == whole_history
    assert resumed.best.epoch == whole.best.epoch
    for part in ("model", "ema"):
        for key, value in last[0][part].items():
            assert torch.equal(last[1][part][key], value), (part, key)
    for key, value in whole_model.items():
        assert torch.equal(load_checkpoint(paths.MODEL_FILE)["state_dict"][key], value), key


def test_ema_validates_the_average() -> None:
    params = small_params(train={"ema_decay": 0.99})
    x, y = synthetic_digits(200, seed=4)
    data = Split(torch.from_numpy(x), torch.from_numpy(y).long())
    torch.manual_seed(0)
    trainer = Trainer(
        MLP(Architecture.from_params(params), 0.2, 0.3),
        params.train,
        Augmentation.from_params(params),
        -(-200 // 32),
    )
    initial = trainer.model.output.weight.detach().clone()
    trainer.train_epoch(data, 1)
    assert trainer.ema is not None and trainer.evaluated is trainer.ema.model
    averaged = trainer.ema.model.output.weight
    assert not torch.equal(averaged, initial)  # updated during the epoch
    assert not torch.equal(averaged, trainer.model.output.weight)
    from pipeline.learner.losses import loss_fn
    from pipeline.learner.scoring import score

    def loss_of(model: MLP) -> float:
        return score(model, data.images, data.labels, loss_fn("cross_entropy"), 4096).loss

    ema_loss = trainer.evaluate(data)[0]
    assert ema_loss == loss_of(trainer.ema.model) and ema_loss != loss_of(trainer.model)


def test_label_smoothing_is_the_training_objective_and_validation_stays_plain() -> None:
    from pipeline.learner.losses import LOSSES, loss_fn

    outputs, labels = torch.randn(6, 10), torch.arange(6)
    target = torch.full((6, 10), 0.01).scatter_(1, labels[:, None], 0.91)
    manual = -(target * outputs.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss_fn("cross_entropy", 0.1)(outputs, labels), manual)
    assert loss_fn("cross_entropy", 0.0) is LOSSES["cross_entropy"]  # off: the very same loss

    def one_epoch(smoothing: float) -> tuple[Trainer, dict[str, torch.Tensor]]:
        params = small_params(train={"label_smoothing": smoothing})
        x, y = synthetic_digits(200, seed=4)
        torch.manual_seed(0)
        model = MLP(Architecture.from_params(params), 0.2, 0.3)
        trainer = Trainer(model, params.train, Augmentation.from_params(params), 7)
        trainer.train_epoch(Split(torch.from_numpy(x), torch.from_numpy(y).long()), 1)
        return trainer, model.state_dict()

    smoothed, smoothed_weights = one_epoch(0.1)
    plain, plain_weights = one_epoch(0.0)
    assert not torch.equal(smoothed_weights["output.weight"], plain_weights["output.weight"])
    assert smoothed.loss is plain.loss is LOSSES["cross_entropy"]


def test_label_smoothing_with_mse_is_refused(inputs: Path) -> None:
    with pytest.raises(PipelineError, match="label_smoothing applies to the cross_entropy loss"):
        train.train(small_params(train={"loss": "mse", "label_smoothing": 0.1}))
    assert not paths.LAST_CHECKPOINT_FILE.exists()
