"""Stage `report`: figures under reports/figures/ and one report in two forms.

reports/report.html embeds every figure as a base64 data URI with inline CSS, so the one file
opens offline and can be mailed around; reports/report.md has the same text and links the PNGs
by relative path. Figures and both files also go to the training run in MLflow.

Nothing in them depends on the clock or the MLflow run: dvc.lock hashes them, so the same results
give the same bytes. Wall time (the training time) and the run's id and link live in MLflow, the
run being the one models/mlflow_run.json names.

`report --committee` does the same for the committee (committee/dvc.yaml) into committee/reports/
and its MLflow run. A committee has no training history of its own, so the learning-curve and
gradient-norm figures give way to a table of its members; it has no hidden layer of its own
either, so those figures show its first member.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix
from threadpoolctl import threadpool_limits

from pipeline import artifacts, atomic
from pipeline.config import Params
from pipeline.data import labelled
from pipeline.data.datasets import CLASSES, NUM_CLASSES
from pipeline.data.loading import Dataset, load_dataset, resize
from pipeline.errors import PipelineError
from pipeline.learner.augment import Augmentation, augment
from pipeline.learner.losses import probabilities
from pipeline.learner.model import (
    MLP,
    Classifier,
    Committee,
    checkpoint_field,
    classifier_from_checkpoint,
    load_checkpoint,
    model_outputs,
    one_thread,
)
from pipeline.paths import COMMITTEE, RAW_DIR, TRAIN_INDEX_FILE, Layout, member_layout
from pipeline.progress import log
from pipeline.quality import plotting
from pipeline.quality.calibration import reliability_bins
from pipeline.quality.measures import off_distribution_examples
from pipeline.quality.report_render import FigureDoc, Section, Table, render_html, render_markdown
from pipeline.registry import tracking
from pipeline.serving import ood

REFERENCE_ACCURACY = 0.98  # test accuracy of the reference notebook
PARAM_SECTIONS = (
    "numerics",
    "data",
    "split",
    "validate",
    "model",
    "augment",
    "train",
    "report",
)  # dvc.yaml: report params
COMMITTEE_PARAM_SECTIONS = (*PARAM_SECTIONS, "committee")  # committee/dvc.yaml: report params
BATCH = 2000
GRID_DIGITS = 32
MISTAKES = 25
WEIGHT_UNITS = 100
TSNE_PCA_DIMS = 50
TSNE_MAX_ITER = 500
# One thread: sklearn's Barnes-Hut gradient runs on OpenMP, whose threads spin-wait; on a shared
# 2-core machine two threads took 2-3x the wall and CPU time of one (docs/evaluation.md), and one
# thread gives the same map on any CPU count.
TSNE_THREADS = 1


@dataclass(frozen=True)
class Training:
    """One model's training record: a single MLP has one, a committee one per member."""

    history: pd.DataFrame
    grad_norms: pd.DataFrame
    best_epoch: int  # the kept weights' (lowest validation loss)


@dataclass(frozen=True)
class Member:
    """A committee member's row in the summary, beside the committee's own accuracies."""

    seed: int
    training: Training
    valid_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class Inputs:
    model: Classifier
    loss_name: str
    training: Training | None  # None for a committee: see members
    members: tuple[Member, ...]  # a committee's, in the order of its checkpoint; () for one MLP
    data: Dataset
    train_index: torch.Tensor
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    predictions: pd.DataFrame
    checksums: artifacts.Checksums
    validation: dict[str, Any]
    ood_reference: ood.OodReference | None

    @property
    def mlp(self) -> MLP:
        """The MLP whose hidden layers the report shows: the model, or a committee's first
        member."""
        return self.model.mlps()[0] if isinstance(self.model, Committee) else self.model


def read_training(payload: dict[str, Any], layout: Layout) -> Training:
    return Training(
        history=artifacts.read_history(layout.history),
        grad_norms=artifacts.read_grad_norms(layout.grad_norms),
        best_epoch=int(checkpoint_field(payload, "epoch", layout.model)),
    )


def read_members(payload: dict[str, Any], metrics: dict[str, Any], path: Path) -> list[Member]:
    """Each member's training record (committee/members/<seed>/) and its accuracies, which
    evaluate --committee numbers member_1, member_2, ... in the checkpoint's order."""
    seeds = checkpoint_field(payload, "seeds", path)
    members = []
    for i, (seed, member) in enumerate(zip(seeds, payload["members"], strict=True), start=1):
        keys = [f"member_{i}_valid_accuracy", f"member_{i}_test_accuracy"]
        if not all(key in metrics for key in keys):
            raise PipelineError(
                f"{COMMITTEE.metrics} lacks {' or '.join(keys)}; rerun the committee's evaluate "
                "stage (dvc repro committee/dvc.yaml)"
            )
        layout = member_layout(int(seed))
        members.append(
            Member(
                int(seed),
                read_training(member, layout),
                float(metrics[keys[0]]),
                float(metrics[keys[1]]),
            )
        )
    return members


def load_inputs(layout: Layout) -> Inputs:
    payload = load_checkpoint(layout.model)
    model = classifier_from_checkpoint(payload)
    data = load_dataset(RAW_DIR, model.image_size, labelled.load())  # train.npy names them too
    predictions = artifacts.read_predictions(layout.predictions)
    if len(predictions) != len(data.test_labels):
        raise PipelineError(
            f"{layout.predictions} has {len(predictions)} rows but the test set "
            f"{len(data.test_labels)} images; rerun dvc repro evaluate"
        )
    metrics = artifacts.read_metrics(layout.metrics)
    committee = isinstance(model, Committee)
    return Inputs(
        model=model,
        loss_name=str(checkpoint_field(payload, "loss", layout.model)),
        training=None if committee else read_training(payload, layout),
        members=tuple(read_members(payload, metrics, layout.model)) if committee else (),
        data=data,
        train_index=torch.from_numpy(
            artifacts.read_index(TRAIN_INDEX_FILE, len(data.train_labels))
        ),
        metrics=metrics,
        per_class=artifacts.read_per_class(layout.per_class),
        predictions=predictions,
        checksums=artifacts.read_checksums(),
        validation=artifacts.read_validation(),
        ood_reference=ood.read_reference(layout.ood_reference),
    )


# ---- computations behind the figures -------------------------------------------------------


@torch.no_grad()
def hidden_features(model: MLP, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat(
        [model.features(batch.float().div_(255)) for batch in images.split(BATCH)]
    ).numpy()


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pca = PCA(n_components=2, random_state=0)
    return pca.fit_transform(features), pca.explained_variance_ratio_


def tsne_sample(count: int, samples: int, seed: int) -> np.ndarray:
    """Which test images go into t-SNE: `samples` of them drawn with the seed, or all if fewer."""
    if samples >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=samples, replace=False))


def tsne_2d(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """Barnes-Hut t-SNE after PCA to 50 dimensions, on one thread: ~6 CPU s for 2,000 points."""
    if perplexity >= len(features):
        raise PipelineError(
            f"report.tsne_perplexity ({perplexity:g}) must be below the number of t-SNE points "
            f"({len(features)}); lower it or raise report.tsne_samples"
        )
    if features.shape[1] > TSNE_PCA_DIMS:
        features = PCA(
            n_components=min(TSNE_PCA_DIMS, len(features)), random_state=seed
        ).fit_transform(features)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=TSNE_MAX_ITER,
        random_state=seed,
        n_jobs=TSNE_THREADS,
    )
    with threadpool_limits(TSNE_THREADS):
        return tsne.fit_transform(features.astype(np.float32))


def confident_mistakes(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    return wrong.sort_values(
        ["confidence", "index"], ascending=[False, True], kind="mergesort"
    ).head(count)


def augmentation_text(aug: Augmentation) -> str:
    parts = []
    if aug.rotation_deg:
        parts.append(f"a random rotation of up to ±{aug.rotation_deg:g}°")
    if aug.scale:
        parts.append(f"a zoom of up to ±{aug.scale * 100:g}%")
    if aug.crop_padding:
        parts.append(
            f"a shift of up to {aug.crop_padding} pixels (random crop of the padded image)"
        )
    if aug.elastic_alpha:
        parts.append(
            f"an elastic distortion (alpha {aug.elastic_alpha:g}, sigma {aug.elastic_sigma:g})"
        )
    if not parts:
        return "Augmentation is off in params.yaml, so these equal the raw digits."
    return (
        "Each is the digit above after "
        + ", ".join(parts)
        + ", as training draws it anew every epoch."
    )


class FigureData:
    """The report's inputs and params, plus what several figures share, each computed once on first
    use."""

    def __init__(self, inputs: Inputs, params: Params) -> None:
        self.inputs = inputs
        self.params = params
        self.aug = Augmentation.from_params(params)

    @property
    def training(self) -> Training:
        """Only for the figures of TRAINING_FIGURES, which build_figures leaves out without it."""
        assert self.inputs.training is not None
        return self.inputs.training

    @cached_property
    def digits(self) -> tuple[torch.Tensor, np.ndarray]:
        """A seeded sample of training digits (uint8 images) and their labels."""
        r, index = self.params.report, self.inputs.train_index
        pick = np.random.default_rng(r.seed).choice(
            len(index), min(GRID_DIGITS, len(index)), replace=False
        )
        chosen = index[np.sort(pick)]
        return self.inputs.data.train_images[chosen], self.inputs.data.train_labels[chosen].numpy()

    @cached_property
    def confusion(self) -> np.ndarray:
        predictions = self.inputs.predictions
        return confusion_matrix(
            predictions["actual"].to_numpy(), predictions["predicted"].to_numpy(), labels=CLASSES
        )

    @cached_property
    def features(self) -> np.ndarray:
        """The last hidden layer's activations on the test set."""
        return hidden_features(self.inputs.mlp, self.inputs.data.test_images)


Figure = tuple[FigureDoc, Any]  # (doc, matplotlib figure)


def raw_digits_figure(d: FigureData) -> Figure:
    raw, labels = d.digits
    return (
        FigureDoc(
            "digits_raw.png",
            "Training digits",
            "A random sample of the training split, exactly as the model reads it.",
        ),
        plotting.digit_grid(raw.numpy(), labels, f"{len(raw)} training digits (raw)"),
    )


def augmented_digits_figure(d: FigureData) -> Figure:
    raw, labels = d.digits
    augmented = augment(raw, d.aug, torch.Generator().manual_seed(d.params.report.seed)).numpy()
    return (
        FigureDoc("digits_augmented.png", "The same digits, augmented", augmentation_text(d.aug)),
        plotting.digit_grid(
            augmented, labels, f"The same {len(raw)} digits after training augmentation"
        ),
    )


def learning_curves_figure(d: FigureData) -> Figure:
    return (
        FigureDoc(
            "learning_curves.png",
            "Learning curves",
            "Validation loss rising while training loss keeps falling means overfitting; train "
            "values are averaged over augmented batches while the weights change, so they can "
            "sit above validation.",
        ),
        plotting.learning_curves(d.training.history),
    )


def confusion_counts_figure(d: FigureData) -> Figure:
    return (
        FigureDoc(
            "confusion_counts.png",
            "Confusion matrix (counts)",
            "Rows are true digits and columns predictions, so every off-diagonal cell counts "
            "one kind of error.",
        ),
        plotting.confusion(d.confusion, normalized=False),
    )


def confusion_normalized_figure(d: FigureData) -> Figure:
    return (
        FigureDoc(
            "confusion_normalized.png",
            "Confusion matrix (normalised)",
            "Each row is in percent of the true digit's test images, so the diagonal is each "
            "digit's recall and off-diagonal cells compare across digits of different frequency; "
            "the colours span the off-diagonal cells only.",
        ),
        plotting.confusion(d.confusion, normalized=True),
    )


def mistakes_figure(d: FigureData) -> Figure:
    data = d.inputs.data
    worst = confident_mistakes(d.inputs.predictions, MISTAKES)
    index = torch.tensor(worst["index"].to_numpy(), dtype=torch.int64)
    probs = np.zeros((0, NUM_CLASSES))
    if len(worst):
        probs = probabilities(
            model_outputs(d.inputs.model, data.test_images[index], BATCH), d.inputs.loss_name
        ).numpy()
    rows = np.arange(len(worst))
    return (
        FigureDoc(
            "mistakes.png",
            "Most confident mistakes",
            "The test errors the model was surest of, worst first; p(d) is the probability it "
            "gives digit d, and such digits are often ambiguous even to a person.",
        ),
        plotting.mistakes(
            data.test_images[index].numpy(),
            worst["actual"].to_numpy(),
            worst["predicted"].to_numpy(),
            probs[rows, worst["predicted"].to_numpy()],
            probs[rows, worst["actual"].to_numpy()],
        ),
    )


def pca_figure(d: FigureData) -> Figure:
    points, ratio = pca_2d(d.features)
    width = d.features.shape[1]
    return (
        FigureDoc(
            "pca.png",
            "PCA of the last hidden layer",
            "The two directions of largest variance of the last hidden layer on the test set: "
            "digits that already separate here are linearly easy for the output layer.",
        ),
        plotting.embedding_scatter(
            points,
            d.inputs.data.test_labels.numpy(),
            f"PCA of the last hidden layer ({width} units), {len(points):,} test images",
            f"PC1 ({ratio[0]:.0%} of variance)",
            f"PC2 ({ratio[1]:.0%} of variance)",
        ),
    )


def tsne_figure(d: FigureData) -> Figure:
    r = d.params.report
    sample = tsne_sample(len(d.features), r.tsne_samples, r.seed)
    started = time.perf_counter()
    embedded = tsne_2d(d.features[sample], r.tsne_perplexity, r.seed)
    log(f"report: t-SNE on {len(sample):,} points took {time.perf_counter() - started:.1f} s")
    return (
        FigureDoc(
            "tsne.png",
            "t-SNE of the last hidden layer",
            f"A nonlinear 2-D map of the same layer for {len(sample):,} test images: compact, "
            "separate clusters mean well-separated digits, and points inside another digit's "
            "cluster are likely errors (distances between clusters mean little).",
        ),
        plotting.embedding_scatter(
            embedded,
            d.inputs.data.test_labels.numpy()[sample],
            f"t-SNE of the last hidden "
            f"layer, {len(sample):,} test images (perplexity {r.tsne_perplexity:g})",
            "t-SNE 1",
            "t-SNE 2",
        ),
    )


def first_layer_weights_figure(d: FigureData) -> Figure:
    model = d.inputs.mlp
    first = model.hidden[0]
    assert isinstance(first, torch.nn.Linear)  # MLP starts with one
    weights = first.weight.detach().numpy()[:WEIGHT_UNITS]
    return (
        FigureDoc(
            "first_layer_weights.png",
            "First-layer weights",
            "Each tile is one hidden unit's input weights on the image grid (red excites, blue "
            "inhibits); stroke-like blobs are learned detectors, salt-and-pepper tiles are "
            "units that learned little.",
        ),
        plotting.first_layer_weights(weights, model.arch.image_size, first.out_features),
    )


def per_class_accuracy_figure(d: FigureData) -> Figure:
    return (
        FigureDoc(
            "per_class_accuracy.png",
            "Per-class accuracy",
            "The share of each digit's test images classified correctly; bars below the dashed "
            "overall line are the hardest digits.",
        ),
        plotting.per_class_accuracy(d.inputs.per_class, float(d.inputs.metrics["test_accuracy"])),
    )


def grad_norms_figure(d: FigureData) -> Figure:
    return (
        FigureDoc(
            "grad_norms.png",
            "Gradient norms",
            "Mean gradient norm of each layer's weights per epoch on a log scale: steady lines "
            "are healthy, while a layer falling orders of magnitude below the others signals "
            "vanishing gradients.",
        ),
        plotting.gradient_norms(d.training.grad_norms),
    )


def reliability_figure(d: FigureData) -> Figure:
    predictions = d.inputs.predictions
    correct = (predictions["actual"] == predictions["predicted"]).to_numpy()
    return (
        FigureDoc(
            "reliability.png",
            "Reliability diagram",
            "Each bar is the accuracy of the test predictions whose confidence falls in that "
            "bin, against the diagonal of perfect calibration; bars below it are "
            "over-confident. The lower panel counts the images per bin, so a gap in a bin of 5 "
            "images matters less than one in a bin of 9,000.",
        ),
        plotting.reliability_diagram(
            reliability_bins(predictions["confidence"].to_numpy(), correct),
            float(d.inputs.metrics["test_ece"]),
        ),
    )


def robustness_figure(d: FigureData) -> Figure:
    metrics = d.inputs.metrics
    robust = {
        key.removeprefix("robust_").removesuffix("_accuracy"): float(value)
        for key, value in metrics.items()
        if key.startswith("robust_") and key.endswith("_accuracy")
    }
    return (
        FigureDoc(
            "robustness.png",
            "Robustness to small perturbations",
            "Test accuracy after each deterministic change (pipeline/quality/perturb.py: "
            "whole-pixel shifts, rotations, Gaussian pixel noise, thicker strokes); a bar far left "
            "of the dashed unperturbed accuracy is an invariance the model has not learned.",
        ),
        plotting.robustness(robust, float(metrics["test_accuracy"])),
    )


def off_distribution_figure(d: FigureData) -> Figure:
    model, reference = d.inputs.model, d.inputs.ood_reference
    names, pictures = off_distribution_examples()
    pictures = resize(pictures, model.image_size)  # as the model and its reference see them
    probs = probabilities(model_outputs(model, pictures, BATCH), d.inputs.loss_name)
    flags = [r.ood for r in ood.check(pictures, reference)] if reference else [False] * len(names)
    titles = [
        f"{name}: {label} ({conf:.2f})"
        for name, label, conf in zip(
            names, probs.argmax(1).tolist(), probs.max(1).values.tolist(), strict=True
        )
    ]
    return (
        FigureDoc(
            "off_distribution.png",
            "Off the digit distribution",
            "Pictures that are not digits and the model's answer with its confidence: an MLP is "
            "confidently wrong away from digits, which is why predict flags inputs whose pixel "
            "statistics are far from the training digits' (a red title is a picture it does not "
            "flag).",
        ),
        plotting.off_distribution(pictures.numpy(), titles, flags),
    )


# The report's figures, in report order.
FIGURES: tuple[Callable[[FigureData], Figure], ...] = (
    raw_digits_figure,
    augmented_digits_figure,
    learning_curves_figure,
    confusion_counts_figure,
    confusion_normalized_figure,
    mistakes_figure,
    pca_figure,
    tsne_figure,
    first_layer_weights_figure,
    per_class_accuracy_figure,
    grad_norms_figure,
    reliability_figure,
    robustness_figure,
    off_distribution_figure,
)


# Drawn from the training history, which a committee has per member only.
TRAINING_FIGURES = (learning_curves_figure, grad_norms_figure)
# Drawn from one MLP's hidden layers: a committee's first member's.
HIDDEN_FIGURES = (pca_figure, tsne_figure, first_layer_weights_figure)


def first_member_doc(doc: FigureDoc, seed: int) -> FigureDoc:
    return FigureDoc(
        doc.name,
        f"{doc.title}, first member (seed {seed})",
        f"The committee's members share no hidden layer, so this shows its first member's. "
        f"{doc.guidance}",
    )


def build_figures(inputs: Inputs, params: Params) -> list[Figure]:
    """(doc, figure) pairs in report order; a committee's without TRAINING_FIGURES."""
    data = FigureData(inputs, params)
    figures = []
    for make in FIGURES:
        if inputs.training is None and make in TRAINING_FIGURES:
            continue
        doc, figure = make(data)
        if inputs.members and make in HIDDEN_FIGURES:
            doc = first_member_doc(doc, inputs.members[0].seed)
        figures.append((doc, figure))
    return figures


# ---- the summary ----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def param_rows(params: Params, names: tuple[str, ...] = PARAM_SECTIONS) -> list[list[str]]:
    """One row per section of `names`: `key=value, ...`, values in JSON (lists, null, quoted-free
    strings)."""
    sections: dict[str, list[str]] = {}
    for name, value in params.flat().items():
        section, key = name.split(".", 1)
        if section in names:
            text = value if isinstance(value, str) else json.dumps(value)
            sections.setdefault(section, []).append(f"{key}={text}")
    return [[section, ", ".join(values)] for section, values in sections.items()]


def members_section(inputs: Inputs) -> Section:
    """A committee's members beside the committee itself: accuracies and kept epoch. No training
    times: the report holds no wall time, each member's MLflow run has its own."""
    members, m = inputs.members, inputs.metrics
    rows = [
        [
            f"member {i} (seed {member.seed})",
            _pct(member.valid_accuracy),
            _pct(member.test_accuracy),
            f"{member.training.best_epoch} of {len(member.training.history)}",
        ]
        for i, member in enumerate(members, start=1)
    ]
    rows.append(
        [
            "committee (mean softmax)",
            _pct(float(m["valid_accuracy"])),
            _pct(float(m["test_accuracy"])),
            "",
        ]
    )
    return Section(
        "Committee",
        [
            f"{len(members)} MLPs, one per seed of committee.seeds (which replaces train.seed), "
            "voting by the mean of their softmax outputs, each member keeping the weights of its "
            "epoch of lowest validation loss.",
            "No learning curves or gradient norms: the committee has no training history of its "
            "own; each member's are in committee/members/<seed>/train_history.csv and "
            "grad_norms.csv, and in its MLflow run (with its training time).",
        ],
        Table(["model", "valid accuracy", "test accuracy", "kept epoch"], rows),
    )


def summary(inputs: Inputs, params: Params) -> list[Section]:
    m, v = inputs.metrics, inputs.validation
    files = inputs.checksums["files"]
    checks = v["expectations"]
    passed = sum(bool(entry.get("success")) for entry in checks)
    counts = ", ".join(f"{n:,} {split}" for split, n in v["counts"].items())
    accuracy = float(m["test_accuracy"])
    delta = (accuracy - REFERENCE_ACCURACY) * 100
    result = [
        f"Test accuracy {_pct(accuracy)} against the reference notebook's "
        f"{_pct(REFERENCE_ACCURACY)} ({delta:+.2f} percentage points); "
        f"{int(m.get('test_errors', 0)):,} of {len(inputs.predictions):,} test images "
        "misclassified.",
        f"Test loss {m['test_loss']:.4f}; validation accuracy "
        f"{_pct(float(m['valid_accuracy']))} (loss {m['valid_loss']:.4f}); macro-F1 "
        f"{m['macro_f1']:.4f}.",
    ]
    if inputs.training is not None:
        training = inputs.training
        result.append(
            f"Trained for {len(training.history)} epochs with the {inputs.loss_name} loss; the "
            f"kept weights are from epoch {training.best_epoch} (lowest validation loss). The "
            "training time is in the training run in MLflow (train_seconds, and epoch_seconds "
            "per epoch), not here: this report is the same bytes whenever the results are."
        )
    sections = [Section("Result", result)]
    if inputs.members:
        sections.append(members_section(inputs))
    return [
        *sections,
        Section(
            "Data",
            [
                f"Dataset {inputs.checksums['dataset']}; data checks "
                f"{'passed' if v['success'] else 'FAILED'} ({passed} of {len(checks)} "
                f"expectations) on {counts} images.",
            ],
            Table(
                ["file", "bytes", "MD5", "SHA-256"],
                [
                    [
                        name,
                        f"{entry.get('bytes', 0):,}",
                        entry.get("md5", ""),
                        entry.get("sha256", ""),
                    ]
                    for name, entry in files.items()
                ],
            ),
        ),
        Section(
            "Parameters",
            ["From params.yaml, as used by this run."],
            Table(
                ["section", "values"],
                param_rows(params, COMMITTEE_PARAM_SECTIONS if inputs.members else PARAM_SECTIONS),
            ),
        ),
    ]


def log_to_mlflow(docs: list[FigureDoc], layout: Layout) -> None:
    import mlflow

    with tracking.resume_run(layout.run):
        for doc in docs:
            mlflow.log_artifact(str(layout.figures / doc.name), "report/figures")
        mlflow.log_artifact(str(layout.report_md), "report")
        mlflow.log_artifact(str(layout.report_html), "report")


def main(params: Params, committee: bool = False) -> None:
    """`committee`: report on the committee (`python -m pipeline report --committee`, its files
    in committee/) into committee/reports/ and its MLflow run, instead of the single model."""
    started = time.perf_counter()
    layout = COMMITTEE if committee else Layout()
    tracking.training_run_id(layout.run)  # fail before the work, not after it
    inputs = load_inputs(layout)
    pngs: dict[str, bytes] = {}
    docs: list[FigureDoc] = []
    with one_thread():
        figures = build_figures(inputs, params)
    for doc, figure in figures:
        pngs[doc.name] = plotting.png_bytes(figure)
        atomic.write_bytes(layout.figures / doc.name, pngs[doc.name])
        docs.append(doc)
    sections = summary(inputs, params)
    atomic.write_text(layout.report_md, render_markdown(sections, docs))
    atomic.write_text(layout.report_html, render_html(sections, docs, pngs))
    log_to_mlflow(docs, layout)
    seconds = time.perf_counter() - started
    log(
        f"report: {len(docs)} figures, {layout.report_html} and {layout.report_md} in "
        f"{seconds:.1f} s"
    )
