"""Stage report on a tiny trained model: every declared output, a self-contained HTML, MLflow
artifacts."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import artifacts, paths
from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.stages import evaluate, report
from tests.helpers import read_rows

FIGURES = [
    "digits_raw.png",
    "digits_augmented.png",
    "learning_curves.png",
    "confusion_counts.png",
    "confusion_normalized.png",
    "mistakes.png",
    "pca.png",
    "tsne.png",
    "first_layer_weights.png",
    "per_class_accuracy.png",
    "grad_norms.png",
    "reliability.png",
    "robustness.png",
    "off_distribution.png",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"report": {"tsne_samples": 50, "tsne_perplexity": 10.0}}


class References(HTMLParser):
    """Every URL-like attribute value and the text of every <style> block."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[dict] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found)
        self._in_style = tag == "style"
        self.urls += [
            v or "" for k, v in attrs if k in ("src", "href", "srcset", "data", "poster", "action")
        ]

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


@pytest.fixture
def evaluated(trained_workdir: Path) -> Path:
    evaluate.main(parse_params({}))
    return trained_workdir


def test_writes_every_output_and_logs_them(evaluated: Path) -> None:
    report.main(parse_params(SMALL))

    for name in FIGURES:
        data = (paths.FIGURES_DIR / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
    assert sorted(p.name for p in paths.FIGURES_DIR.iterdir()) == sorted(FIGURES)

    page = paths.REPORT_HTML_FILE.read_text()
    refs = References()
    refs.feed(page)
    # Self-contained: every reference is an embedded PNG, nothing is fetched.
    assert len(refs.urls) == len(FIGURES)
    for url in refs.urls:
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert refs.scripts == []
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    for css in refs.styles:
        assert "@import" not in css and "url(" not in css
    assert "<link" not in page.lower()

    md = paths.REPORT_MD_FILE.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert linked == [f"figures/{name}" for name in FIGURES]
    assert all((paths.REPORTS_DIR / link).is_file() for link in linked)
    # The same summary in both: accuracy against the reference, data checks, training time, params.
    for text in (md, page):
        assert "reference notebook's 98.00%" in text
        assert "data checks passed (1 of 1 expectations)" in text
        assert "Trained for 3 epochs with the cross_entropy loss" in text
        assert "Training time" not in text  # wall time: in MLflow, not in a file dvc.lock hashes
        assert "tsne_samples=50, tsne_perplexity=10.0, seed=0" in text and "lr=0.001" in text
        assert "registered_model" not in text  # mlflow.*: not a param the report depends on
    checksums = pd.read_json(paths.CHECKSUMS_FILE)
    for entry in checksums["files"]:
        assert entry["md5"] in md and entry["md5"] in page

    import mlflow

    run_id = artifacts.read_run_reference()["run_id"]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "report")}
    assert logged == {"report/figures", "report/report.html", "report/report.md"}
    figures = {
        a.path.rsplit("/", 1)[1]
        for a in mlflow.MlflowClient().list_artifacts(run_id, "report/figures")
    }
    assert figures == set(FIGURES)


def test_a_retrain_to_the_same_results_gives_the_same_report_bytes(
    evaluated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvc.lock hashes the figures and both reports: another MLflow run and other epoch times (a
    retrain to the same weights) must not change a byte; wall time stays in MLflow. Two figures
    only, the ones drawn from the training history, to keep it fast."""
    import mlflow

    monkeypatch.setattr(
        report, "FIGURES", (report.learning_curves_figure, report.grad_norms_figure)
    )
    report.main(parse_params(SMALL))
    files = [paths.REPORT_MD_FILE, paths.REPORT_HTML_FILE, *sorted(paths.FIGURES_DIR.iterdir())]
    first = {path: path.read_bytes() for path in files}
    rows = [{**row, "seconds": 9.75} for row in read_rows(paths.TRAIN_HISTORY_FILE)]
    artifacts.write_history(rows)  # as train writes its rows: wall time included
    with mlflow.start_run() as run:
        mlflow.log_param("train.epochs", 3)
    artifacts.write_run_reference(run.info.run_id, run.info.experiment_id)
    report.main(parse_params(SMALL))
    assert [path for path in files if path.read_bytes() != first[path]] == []
    assert run.info.run_id not in paths.REPORT_HTML_FILE.read_text()


def test_confident_mistakes_ranks_errors_by_confidence() -> None:
    predictions = pd.DataFrame(
        {
            "index": [0, 1, 2, 3, 4],
            "actual": [1, 2, 3, 4, 5],
            "predicted": [1, 7, 8, 9, 0],
            "confidence": [0.99, 0.6, 0.9, 0.9, 0.3],
        }
    )
    worst = report.confident_mistakes(predictions, 3)
    assert worst["index"].tolist() == [2, 3, 1]  # correct row 0 excluded, ties by index


def test_tsne_sample_is_seeded_and_bounded() -> None:
    a, b = report.tsne_sample(1000, 100, seed=3), report.tsne_sample(1000, 100, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and a.max() < 1000
    assert not np.array_equal(a, report.tsne_sample(1000, 100, seed=4))
    assert np.array_equal(report.tsne_sample(40, 100, seed=0), np.arange(40))


def test_tsne_runs_on_one_openmp_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two spinning OpenMP threads took 2-3x the time of one on the shared 2-core machine."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_info

    seen: list[int] = []
    fit = TSNE.fit_transform

    def spy(self: TSNE, features: np.ndarray) -> np.ndarray:
        pools = threadpool_info()
        seen.extend(pool["num_threads"] for pool in pools if pool["user_api"] == "openmp")
        return fit(self, features)

    monkeypatch.setattr(TSNE, "fit_transform", spy)
    features = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    assert report.tsne_2d(features, perplexity=10.0, seed=0).shape == (60, 2)
    assert seen and set(seen) == {1}


def test_perplexity_too_large_for_the_sample_is_refused() -> None:
    with pytest.raises(
        PipelineError, match="tsne_perplexity.*lower it or raise report.tsne_samples"
    ):
        report.tsne_2d(np.zeros((20, 8), dtype=np.float32), perplexity=30.0, seed=0)


def test_stale_predictions_are_refused(evaluated: Path) -> None:
    artifacts.write_predictions(artifacts.read_predictions().head(10))
    with pytest.raises(
        PipelineError, match="predictions.csv has 10 rows.*rerun dvc repro evaluate"
    ):
        report.main(parse_params(SMALL))
    assert not paths.REPORT_HTML_FILE.exists()


def test_missing_history_names_the_stage(evaluated: Path) -> None:
    paths.TRAIN_HISTORY_FILE.unlink()
    with pytest.raises(
        PipelineError,
        match=r"train_history.csv is missing; run the train stage first \(dvc repro train\)",
    ):
        report.main(parse_params(SMALL))


@pytest.mark.slow
def test_runs_on_the_real_upstream_stages(run_stages) -> None:
    """The contracts hold against what the real stages write, not only the fixture's files."""
    run_stages("download", "stats", "split", "validate", "train", "evaluate", "report")
    assert sorted(p.name for p in paths.FIGURES_DIR.iterdir()) == sorted(FIGURES)
    md = paths.REPORT_MD_FILE.read_text()
    assert "data checks passed" in md and "Trained for 2 epochs" in md
