"""Stage `report`: figures under reports/figures/ and one report in two forms.

reports/report.html embeds every figure as a base64 data URI with inline CSS, so the one file
opens offline and can be mailed around; reports/report.md has the same text and links the PNGs
by relative path. Figures and both files also go to the training run in MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix
from threadpoolctl import threadpool_limits

from pipeline import artifacts, atomic, ood, plotting, tracking
from pipeline.augment import Augmentation, augment
from pipeline.calibration import reliability_bins
from pipeline.config import Params
from pipeline.data import Dataset, load_dataset, resize
from pipeline.datasets import CLASSES, NUM_CLASSES
from pipeline.errors import PipelineError
from pipeline.losses import probabilities
from pipeline.model import (
    MLP,
    checkpoint_field,
    load_checkpoint,
    model_from_checkpoint,
    model_outputs,
    one_thread,
)
from pipeline.paths import (
    FIGURES_DIR,
    MLFLOW_RUN_FILE,
    MODEL_FILE,
    OOD_REFERENCE_FILE,
    PREDICTIONS_FILE,
    RAW_DIR,
    REPORT_HTML_FILE,
    REPORT_MD_FILE,
    TRAIN_INDEX_FILE,
)
from pipeline.progress import log
from pipeline.quality import off_distribution_examples
from pipeline.report_render import FigureDoc, Section, Table, render_html, render_markdown

REFERENCE_ACCURACY = 0.98  # test accuracy of the reference notebook
PARAM_SECTIONS = (
    "data",
    "split",
    "validate",
    "model",
    "augment",
    "train",
    "report",
)  # dvc.yaml: report params
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
class Inputs:
    model: MLP
    loss_name: str
    best_epoch: int
    data: Dataset
    train_index: torch.Tensor
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    predictions: pd.DataFrame
    history: pd.DataFrame
    grad_norms: pd.DataFrame
    checksums: artifacts.Checksums
    validation: dict[str, Any]
    ood_reference: ood.OodReference | None


def load_inputs() -> Inputs:
    payload = load_checkpoint(MODEL_FILE)
    model = model_from_checkpoint(payload)
    data = load_dataset(RAW_DIR, model.arch.image_size)
    predictions = artifacts.read_predictions()
    if len(predictions) != len(data.test_labels):
        raise PipelineError(
            f"{PREDICTIONS_FILE} has {len(predictions)} rows but the test set "
            f"{len(data.test_labels)} images; rerun dvc repro evaluate"
        )
    return Inputs(
        model=model,
        loss_name=str(checkpoint_field(payload, "loss", MODEL_FILE)),
        best_epoch=int(checkpoint_field(payload, "epoch", MODEL_FILE)),
        data=data,
        train_index=torch.from_numpy(
            artifacts.read_index(TRAIN_INDEX_FILE, len(data.train_labels))
        ),
        metrics=artifacts.read_metrics(),
        per_class=artifacts.read_per_class(),
        predictions=predictions,
        history=artifacts.read_history(),
        grad_norms=artifacts.read_grad_norms(),
        checksums=artifacts.read_checksums(),
        validation=artifacts.read_validation(),
        ood_reference=ood.read_reference(OOD_REFERENCE_FILE),
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
        return hidden_features(self.inputs.model, self.inputs.data.test_images)


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
        plotting.learning_curves(d.inputs.history),
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
            "Each row sums to 1, so the diagonal is each digit's recall and off-diagonal cells "
            "compare across digits of different frequency.",
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
    model = d.inputs.model
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
        plotting.first_layer_weights(weights, model.arch.image_size),
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
        plotting.gradient_norms(d.inputs.grad_norms),
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
            "Test accuracy after each deterministic change (pipeline/perturb.py: whole-pixel "
            "shifts, rotations, Gaussian pixel noise, thicker strokes); a bar far left of the "
            "dashed unperturbed accuracy is an invariance the model has not learned.",
        ),
        plotting.robustness(robust, float(metrics["test_accuracy"])),
    )


def off_distribution_figure(d: FigureData) -> Figure:
    model, reference = d.inputs.model, d.inputs.ood_reference
    names, pictures = off_distribution_examples()
    probs = probabilities(
        model_outputs(model, resize(pictures, model.arch.image_size), BATCH), d.inputs.loss_name
    )
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


def build_figures(inputs: Inputs, params: Params) -> list[Figure]:
    """(doc, figure) pairs in report order."""
    data = FigureData(inputs, params)
    return [make(data) for make in FIGURES]


# ---- the summary ----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def param_rows(params: Params) -> list[list[str]]:
    """One row per section: `key=value, ...`, values in JSON (lists, null, quoted-free strings)."""
    sections: dict[str, list[str]] = {}
    for name, value in params.flat().items():
        section, key = name.split(".", 1)
        if section in PARAM_SECTIONS:
            text = value if isinstance(value, str) else json.dumps(value)
            sections.setdefault(section, []).append(f"{key}={text}")
    return [[section, ", ".join(values)] for section, values in sections.items()]


def summary(inputs: Inputs, params: Params) -> list[Section]:
    m, v = inputs.metrics, inputs.validation
    files = inputs.checksums["files"]
    checks = v["expectations"]
    passed = sum(bool(entry.get("success")) for entry in checks)
    counts = ", ".join(f"{n:,} {split}" for split, n in v["counts"].items())
    accuracy = float(m["test_accuracy"])
    delta = (accuracy - REFERENCE_ACCURACY) * 100
    seconds = float(inputs.history["seconds"].sum())
    return [
        Section(
            "Result",
            [
                f"Test accuracy {_pct(accuracy)} against the reference notebook's "
                f"{_pct(REFERENCE_ACCURACY)} ({delta:+.2f} percentage points); "
                f"{int(m.get('test_errors', 0)):,} of {len(inputs.predictions):,} test images "
                "misclassified.",
                f"Test loss {m['test_loss']:.4f}; validation accuracy "
                f"{_pct(float(m['valid_accuracy']))} (loss {m['valid_loss']:.4f}); macro-F1 "
                f"{m['macro_f1']:.4f}.",
                f"Training time {seconds:.1f} s over {len(inputs.history)} epochs; the kept "
                f"weights are from epoch {inputs.best_epoch} (lowest validation loss), trained "
                f"with the {inputs.loss_name} loss.",
            ],
        ),
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
            Table(["section", "values"], param_rows(params)),
        ),
    ]


def log_to_mlflow(docs: list[FigureDoc]) -> None:
    import mlflow

    with tracking.resume_run(MLFLOW_RUN_FILE):
        for doc in docs:
            mlflow.log_artifact(str(FIGURES_DIR / doc.name), "report/figures")
        mlflow.log_artifact(str(REPORT_MD_FILE), "report")
        mlflow.log_artifact(str(REPORT_HTML_FILE), "report")


def main(params: Params) -> None:
    started = time.perf_counter()
    tracking.training_run_id(MLFLOW_RUN_FILE)  # fail before the work, not after it
    inputs = load_inputs()
    pngs: dict[str, bytes] = {}
    docs: list[FigureDoc] = []
    with one_thread():
        figures = build_figures(inputs, params)
    for doc, figure in figures:
        pngs[doc.name] = plotting.png_bytes(figure)
        atomic.write_bytes(FIGURES_DIR / doc.name, pngs[doc.name])
        docs.append(doc)
    sections = summary(inputs, params)
    atomic.write_text(REPORT_MD_FILE, render_markdown(sections, docs))
    atomic.write_text(REPORT_HTML_FILE, render_html(sections, docs, pngs))
    log_to_mlflow(docs)
    seconds = time.perf_counter() - started
    log(f"report: {len(docs)} figures, {REPORT_HTML_FILE} and {REPORT_MD_FILE} in {seconds:.1f} s")
