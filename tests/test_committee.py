"""The committee: members' mean softmax as one model (pipeline/learner/model.py's Committee), its
checkpoint and pt2 export, and the member, committee, evaluate --committee and report --committee
stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.learner.model import (
    COMMITTEE_FORMAT,
    MLP,
    Architecture,
    Committee,
    checkpoint_field,
    checkpoint_payload,
    classifier_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_payload,
)
from pipeline.paths import COMMITTEE, member_layout
from pipeline.registry import tracking
from pipeline.stages import committee, evaluate, promote, report, train
from tests.helpers import TINY_PIPELINE, load_script

tta_search = load_script("committee_tta_search")
diversity_search = load_script("committee_diversity_search")


def members(count: int = 3, size: int = 28) -> list[MLP]:
    torch.manual_seed(0)
    return [MLP(Architecture(size, (16 + 8 * i,)), 0.13, 0.3).eval() for i in range(count)]


def test_committee_output_is_the_log_of_the_members_mean_softmax() -> None:
    mlps = members()
    pixels = torch.rand(7, 784)
    outputs = Committee(mlps)(pixels)
    mean = torch.stack([torch.softmax(m(pixels), 1) for m in mlps]).mean(0)
    torch.testing.assert_close(torch.softmax(outputs, 1), mean)  # what losses.probabilities reads
    torch.testing.assert_close(outputs.exp(), mean)
    assert torch.equal(outputs.argmax(1), mean.argmax(1))
    one = Committee(mlps[:1])(pixels)  # a committee of one is that MLP's log-softmax
    torch.testing.assert_close(one, torch.log_softmax(mlps[0](pixels), 1))


def test_members_of_other_image_sizes_are_refused() -> None:
    with pytest.raises(PipelineError, match=r"sizes \[16, 28\]; train them all with the same"):
        Committee(members(1, 28) + members(1, 16))


def test_committee_checkpoint_loads_back_as_the_same_committee(tmp_path: Path) -> None:
    mlps = members(2)
    path = tmp_path / "committee.pt"
    payload = {
        "format": COMMITTEE_FORMAT,
        "members": [checkpoint_payload(m, {"loss": "cross_entropy"}) for m in mlps],
        "loss": "cross_entropy",
        "epoch": 0,
    }
    save_payload(path, payload)
    loaded = classifier_from_checkpoint(load_checkpoint(path))
    assert isinstance(loaded, Committee) and loaded.image_size == 28
    pixels = torch.rand(5, 28, 28)
    torch.testing.assert_close(loaded(pixels), Committee(mlps)(pixels))
    with pytest.raises(PipelineError, match="committee checkpoint"):
        model_from_checkpoint(load_checkpoint(path))


def test_logged_committee_is_served_with_the_single_models_contract(mlflow_workdir: Path) -> None:
    """Logged as train logs one MLP: the same signature, loadable without pickles through pyfunc as
    `mlflow models serve` loads it; its probabilities are the members' mean softmax and its feature
    vector their features side by side."""
    import mlflow

    from pipeline.serving import registration
    from pipeline.serving.predict import MLFLOW_ENVIRONMENT
    from pipeline.serving.service import fit_references
    from tests.helpers import synthetic_digits

    model = Committee(members(2))
    train_images, _ = synthetic_digits(300, seed=0)
    valid_images, _ = synthetic_digits(100, seed=1)
    references = fit_references(
        model, "cross_entropy", torch.from_numpy(train_images), torch.from_numpy(valid_images)
    )
    tracking.configure()
    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run():
        info = registration.log_model(model, "cross_entropy", references, "mnist-mlp")
        single = registration.log_model(model.mlps()[0], "cross_entropy", references, "single")
    assert str(info.signature) == str(single.signature)
    outputs = info.signature.outputs.to_dict()[0]["properties"]  # the model card's answer
    assert {"digit", "probability", "probabilities", "ood", "ood_reason", "features"} == set(
        outputs
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in MLFLOW_ENVIRONMENT.items():
            patch.setenv(key, value)
        served = mlflow.pyfunc.load_model(info.model_uri)
        pixels = np.random.default_rng(1).random((3, 784), dtype=np.float32)
        answers = served.predict(pixels.tolist(), params={"features": True})
    mean = torch.stack([torch.softmax(m(torch.from_numpy(pixels)), 1) for m in model.mlps()]).mean(
        0
    )
    for answer, expected in zip(answers, mean.tolist(), strict=True):
        assert answer["probabilities"] == pytest.approx(expected, abs=1e-5)
        hidden = [len(m.features(torch.from_numpy(pixels[:1]))[0]) for m in model.mlps()]
        assert len(answer["features"]) == sum(hidden)


def test_members_committee_and_its_evaluation(
    run_stages, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tiny members (the second interrupted once and resumed), the committee stage,
    evaluate --committee, report --committee and promote --committee, in-process on the
    synthetic data."""
    import mlflow

    from pipeline.serving.predict import load_answerer

    params = run_stages("download", "stats", "split", "validate")
    params = parse_params({**TINY_PIPELINE, "committee": {"seeds": [3, 7]}})
    train.train(params, member=3)

    class Interrupt(Exception):
        pass

    def stop(epoch: int) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train.train(params, member=7, after_epoch=stop)
    capsys.readouterr()
    train.train(params, member=7)
    assert "resuming from committee/members/7/last.pt after epoch 1" in capsys.readouterr().err
    assert not Path("models/model.pt").exists()  # members leave the single model's files alone
    weights = [load_checkpoint(member_layout(s).model)["state_dict"] for s in (3, 7)]
    assert not torch.equal(weights[0]["output.weight"], weights[1]["output.weight"])
    client = mlflow.MlflowClient()
    assert client.search_model_versions("name='mnist-mlp'") == []  # members are not registered

    committee.main(params)
    evaluate.main(params, committee=True)
    metrics = json.loads(COMMITTEE.metrics.read_text())
    for i in (1, 2):
        assert 0 <= metrics[f"member_{i}_test_accuracy"] <= 1
        assert 0 <= metrics[f"member_{i}_valid_accuracy"] <= 1
    assert metrics["test_accuracy"] > 0.5 and {"test_ece", "test_nll"} <= set(metrics)
    assert COMMITTEE.predictions.is_file() and COMMITTEE.ood_reference.is_file()

    (version,) = client.search_model_versions("name='mnist-mlp'")
    run_id = json.loads(COMMITTEE.run.read_text())["run_id"]
    assert version.run_id == run_id and version.tags["input_shape"] == "[N, 784]"
    run = client.get_run(run_id)
    member_runs = [json.loads(member_layout(s).run.read_text())["run_id"] for s in (3, 7)]
    assert run.data.tags["committee_member_runs"] == ",".join(member_runs)
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]

    report.main(params, committee=True)
    figures = {p.name for p in COMMITTEE.figures.iterdir()}
    assert {"pca.png", "mistakes.png", "off_distribution.png"} <= figures and len(figures) == 12
    assert not {"learning_curves.png", "grad_norms.png"} & figures  # members' histories only
    md = COMMITTEE.report_md.read_text()
    html = COMMITTEE.report_html.read_text()

    def pct(key: str) -> str:
        return f"{metrics[key] * 100:.2f}%"

    for text in (md, html.replace("</td><td>", " | ")):
        for i, seed in ((1, 3), (2, 7)):  # each member beside the committee
            valid, test = pct(f"member_{i}_valid_accuracy"), pct(f"member_{i}_test_accuracy")
            assert f"member {i} (seed {seed}) | {valid} | {test} | " in text
        committee_row = f"{pct('valid_accuracy')} | {pct('test_accuracy')}"
        assert f"committee (mean softmax) | {committee_row}" in text
        assert "PCA of the last hidden layer, first member (seed 3)" in text
        assert "No learning curves or gradient norms" in text and "seeds=[3, 7]" in text
    assert not Path("reports/report.md").exists()  # the single model's report is left alone
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert logged == {"report/figures", "report/report.html", "report/report.md"}

    with monkeypatch.context() as patch:  # as `make committee` runs it: a DVC experiment
        patch.setenv("DVC_EXP_BASELINE_REV", "0123456789abcdef")
        promote.main(params, committee=True)
    record = json.loads(COMMITTEE.promotion.read_text())
    assert record["decision"] == "would promote" and record["run_id"] == run_id
    assert record["version"] == int(version.version)
    assert "champion" not in client.get_registered_model("mnist-mlp").aliases
    promote.main(params, committee=True)  # the main line (no git checkout here: see mainline.py)
    assert json.loads(COMMITTEE.promotion.read_text())["decision"] == "promoted"
    assert client.get_registered_model("mnist-mlp").aliases["champion"] == version.version
    assert not Path("reports/promotion.json").exists()  # the single model's is left alone

    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    local = load_answerer(str(COMMITTEE.model))
    logged = load_answerer(f"models:/mnist-mlp/{version.version}")
    # the committee stage fitted it; the logged model's classes are its own code's copy
    # (predict.its_own_code), so the two compare by value
    assert local.reference is not None and logged.reference is not None
    assert logged.reference.to_dict() == local.reference.to_dict()
    rows = local.rows_from_images(images.numpy())
    for got, expected in zip(logged.answer(rows), local.answer(rows), strict=True):
        assert (got["digit"], got["ood"]) == (expected["digit"], expected["ood"])
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_members_trained_with_mse_are_refused(run_stages) -> None:
    run_stages("download", "stats", "split")
    params = parse_params({**TINY_PIPELINE, "train": {"epochs": 1, "loss": "mse"}})
    for seed in (1, 2):
        train.train(params, member=seed)
    with pytest.raises(PipelineError, match="trained with the mse loss, but a committee averages"):
        committee.main(parse_params({**TINY_PIPELINE, "committee": {"seeds": [1, 2]}}))
    assert not COMMITTEE.model.exists()


def test_committee_seeds_are_checked() -> None:
    with pytest.raises(PipelineError, match=r"committee.seeds must not repeat a seed"):
        parse_params({"committee": {"seeds": [1, 1]}})
    with pytest.raises(PipelineError, match=r"committee.seeds must have at least 2"):
        parse_params({"committee": {"seeds": [1]}})


@pytest.mark.slow
def test_plain_repro_leaves_the_committee_out_and_its_own_dvc_yaml_runs_it(
    dvc_project: Path,
) -> None:
    """committee/dvc.yaml in a fresh repository: `dvc repro` runs none of its stages,
    `dvc repro committee/dvc.yaml` trains the members on the root pipeline's data outputs,
    combines, scores and reports them, and predict reads the registered committee."""
    import shutil
    import subprocess

    import yaml

    source = Path(__file__).resolve().parents[1] / "committee"
    Path("committee").mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(source / name, Path("committee") / name)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["committee"] = {"seeds": [1, 2]}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(*command: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    plain = run("dvc", "repro")  # targets ./dvc.yaml alone: never looks at the committee's
    assert "Running stage 'promote'" in plain and "committee/dvc.yaml" not in plain
    assert not Path("committee/members").exists()
    out = run("dvc", "repro", "committee/dvc.yaml")
    assert "Running stage 'committee/dvc.yaml:member@1'" in out
    assert "Stage 'validate' didn't change, skipping" in out  # the root's data outputs reused
    metrics = json.loads(Path("committee/reports/metrics.json").read_text())
    assert {"member_1_test_accuracy", "member_2_test_accuracy", "test_accuracy"} <= set(metrics)
    assert "member 2 (seed 2) | " in Path("committee/reports/report.md").read_text()
    # params.yaml, changed above and tracked, makes this run a trial: the champion stays put
    promotion = json.loads(Path("committee/reports/promotion.json").read_text())
    assert promotion["version"] == 2 and not promotion["may_move_champion"]
    assert promotion["decision"] in ("would promote", "would keep")
    assert "Data and pipelines are up to date" in run("dvc", "status", "committee/dvc.yaml")
    params["train"]["seed"] += 1  # each member trains with its own seed instead
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "member@" not in run("dvc", "status", "committee/dvc.yaml")
    lines = run(
        "python",
        "-m",
        "pipeline",
        "predict",
        "--json",
        "--model",
        "models:/mnist-mlp/2",  # 1: the single model
        "data/raw/t10k-images-idx3-ubyte.gz",
    ).splitlines()
    assert len(lines) == 200 and {"label", "confidence"} <= set(json.loads(lines[0]))


def test_cli_hands_member_and_committee_flags_to_the_stages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline import __main__ as cli

    seen = []
    monkeypatch.setattr(
        cli, "run_stage", lambda stage, params, options, restart: seen.append((stage, options)) or 0
    )
    for argv in (
        ["train", "--member", "0"],
        ["evaluate", "--committee"],
        ["report", "--committee"],
        ["promote", "--committee"],
        ["train"],
    ):
        assert cli.main(argv) == 0
    assert seen == [
        ("train", {"member": 0}),
        ("evaluate", {"committee": True}),
        ("report", {"committee": True}),
        ("promote", {"committee": True}),
        ("train", {}),
    ]
    with pytest.raises(SystemExit):  # one version to decide for: the committee's or the run's
        cli.main(["promote", "--committee", "--run", "abc"])


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["committee"], "committee/members/3/model.pt not found"),
        (["evaluate", "--committee"], "committee/models/mlflow_run.json is missing"),
        (["report", "--committee"], "committee/models/mlflow_run.json is missing"),
    ],
    ids=["committee", "evaluate", "report"],
)
def test_missing_committee_files_name_the_committee_pipeline(
    mlflow_workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], problem: str
) -> None:
    """A plain `dvc repro train` never writes committee/: the fix is the committee's dvc.yaml."""
    from pipeline import __main__ as cli

    Path("params.yaml").write_text("committee:\n  seeds: [3, 4]\n")
    assert cli.main(argv) == 1
    fix = "run the committee pipeline first (dvc repro committee/dvc.yaml)"
    assert capsys.readouterr().err == f"error: {problem}; {fix}\n"
    with pytest.raises(PipelineError, match=r"'loss' entry train records; rerun the committee pip"):
        checkpoint_field({}, "loss", COMMITTEE.model)


def test_tta_search_shifts_move_pixels_with_zero_fill() -> None:
    images = torch.zeros(1, 4, 4, dtype=torch.uint8)
    images[0, 0, 0], images[0, 2, 3] = 9, 7
    down_right = tta_search.shifted(images, 1, 1)[0]
    assert down_right[1, 1] == 9 and down_right[3, 3] == 0  # (2, 3) moved out of the image
    up_left = tta_search.shifted(images, -1, -1)[0]
    assert up_left[1, 2] == 7 and int(up_left.sum()) == 7  # (0, 0) moved out, zeros came in


def test_tta_search_counts_every_committee_of_each_size() -> None:
    labels = torch.tensor([0, 1])
    right, wrong = torch.tensor([[0.9, 0.1], [0.1, 0.9]]), torch.tensor([[0.4, 0.6], [0.6, 0.4]])
    softmax = torch.stack([right, right, wrong])  # members 1 and 2 right on both, 3 wrong on both
    by_size = tta_search.mean_errors_by_size(softmax, labels)
    # alone: 0, 0, 2 errors; pairs: {1,2} 0, {1,3} and {2,3} average to [0.65, 0.35]: 0; all: 0
    assert by_size == {1: 2 / 3, 2: 0.0, 3: 0.0}


def test_diversity_search_changes_only_the_named_params_of_each_new_member() -> None:
    committee = parse_params({"model": {"hidden": [1024, 1024, 1024], "dropout": 0.2}})
    wide = diversity_search.member_params(committee, 6)
    assert wide.model.hidden == [2048, 1024] and wide.model.dropout == 0.2
    assert wide.augment == committee.augment and wide.train == committee.train
    affine = diversity_search.member_params(committee, 7)
    assert affine.model == committee.model
    assert (affine.augment.elastic_alpha, affine.augment.crop_padding) == (0.0, 3)
    assert affine.augment.interpolation == committee.augment.interpolation


@pytest.mark.parametrize(("hard_images", "adopted"), [(3, True), (2, False)])
def test_diversity_search_adopts_only_a_gain_of_min_gain_errors(hard_images, adopted) -> None:
    labels = torch.zeros(5, dtype=torch.long)
    # seed-only members all give 0.6 to the wrong class on the hard images; the new members are
    # sure of the right one everywhere, so any three seed-only ones plus both new ones are right
    seed_only = torch.tensor([[0.9, 0.1]] * 5)
    seed_only[:hard_images] = torch.tensor([0.4, 0.6])
    softmax = {s: seed_only for s in diversity_search.SEED_ONLY}
    softmax |= {s: torch.tensor([[1.0, 0.0]] * 5) for s in diversity_search.DIVERSE}
    result = diversity_search.compare(softmax, labels)
    assert result["seed_only_committee_errors"] == hard_images
    assert len(result["mixed_committee_errors"]) == 10
    assert result["mixed_mean_errors"] == 0 and result["adopted"] is adopted
