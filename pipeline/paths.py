"""Where each stage reads and writes, relative to the repository root (DVC runs stages there).

dvc.yaml names the same paths; keep the two in step.
"""

from dataclasses import dataclass
from pathlib import Path

RAW_DIR = Path("data/raw")
CHECKSUMS_FILE = RAW_DIR / "checksums.json"
UPSTREAM_FILE = Path("data/upstream.json")  # git-tracked: see pipeline/data/upstream.py
STATS_FILE = Path("data/stats.json")
SPLIT_DIR = Path("data/split")
TRAIN_INDEX_FILE = SPLIT_DIR / "train.npy"
VALID_INDEX_FILE = SPLIT_DIR / "valid.npy"
SPLIT_SUMMARY_FILE = SPLIT_DIR / "summary.json"
# Labelled batches (pipeline/data/labelled.py): the files, DVC-tracked by data/labelled.dvc once a
# batch exists, and the manifest git keeps, which the stages that read the batches depend on.
LABELLED_DIR = Path("data/labelled")
LABELLED_MANIFEST = Path("data/labelled.json")

MODELS_DIR = Path("models")
MODEL_FILE = MODELS_DIR / "model.pt"
LAST_CHECKPOINT_FILE = MODELS_DIR / "last.pt"
MLFLOW_RUN_FILE = MODELS_DIR / "mlflow_run.json"
OOD_REFERENCE_FILE = MODELS_DIR / "ood_reference.json"  # beside the checkpoint predict reads
# The validation split as the model answers it: what `monitor` compares records with (drift.py)
MONITOR_REFERENCE_FILE = MODELS_DIR / "monitor_reference.npz"

REPORTS_DIR = Path("reports")
DATA_VALIDATION_FILE = REPORTS_DIR / "data_validation.json"
DATA_DOCS_DIR = REPORTS_DIR / "data_docs"
TRAIN_HISTORY_FILE = REPORTS_DIR / "train_history.csv"
GRAD_NORMS_FILE = REPORTS_DIR / "grad_norms.csv"
METRICS_FILE = REPORTS_DIR / "metrics.json"
PER_CLASS_FILE = REPORTS_DIR / "per_class.csv"
PREDICTIONS_FILE = REPORTS_DIR / "predictions.csv"
FIGURES_DIR = REPORTS_DIR / "figures"
REPORT_HTML_FILE = REPORTS_DIR / "report.html"
REPORT_MD_FILE = REPORTS_DIR / "report.md"
PROMOTION_FILE = REPORTS_DIR / "promotion.json"
MONITORING_FILE = REPORTS_DIR / "monitoring.json"  # `python -m pipeline monitor`, not a stage
MONITORING_HTML_FILE = REPORTS_DIR / "monitoring.html"

COMMITTEE_DIR = Path("committee")  # committee/dvc.yaml: the committee preset's own pipeline


@dataclass(frozen=True)
class Layout:
    """Where one model's train, evaluate, report and promote files go: the root pipeline's by
    default, else a committee member's folder or the committee's (committee/dvc.yaml names the
    same paths)."""

    models: Path = MODELS_DIR
    reports: Path = REPORTS_DIR

    @property
    def model(self) -> Path:
        return self.models / MODEL_FILE.name

    @property
    def last(self) -> Path:
        return self.models / LAST_CHECKPOINT_FILE.name

    @property
    def run(self) -> Path:
        return self.models / MLFLOW_RUN_FILE.name

    @property
    def ood_reference(self) -> Path:
        return self.models / OOD_REFERENCE_FILE.name

    @property
    def monitor_reference(self) -> Path:
        return self.models / MONITOR_REFERENCE_FILE.name

    @property
    def history(self) -> Path:
        return self.reports / TRAIN_HISTORY_FILE.name

    @property
    def grad_norms(self) -> Path:
        return self.reports / GRAD_NORMS_FILE.name

    @property
    def metrics(self) -> Path:
        return self.reports / METRICS_FILE.name

    @property
    def per_class(self) -> Path:
        return self.reports / PER_CLASS_FILE.name

    @property
    def predictions(self) -> Path:
        return self.reports / PREDICTIONS_FILE.name

    @property
    def figures(self) -> Path:
        return self.reports / FIGURES_DIR.name

    @property
    def report_html(self) -> Path:
        return self.reports / REPORT_HTML_FILE.name

    @property
    def report_md(self) -> Path:
        return self.reports / REPORT_MD_FILE.name

    @property
    def promotion(self) -> Path:
        return self.reports / PROMOTION_FILE.name


COMMITTEE = Layout(COMMITTEE_DIR / "models", COMMITTEE_DIR / "reports")


def member_layout(seed: int) -> Layout:
    """A committee member's files, all in committee/members/<seed>/."""
    folder = COMMITTEE_DIR / "members" / str(seed)
    return Layout(folder, folder)


def _made_by(path: Path, stage: str) -> tuple[str, str]:
    """What rebuilds `path` and the command that runs it. The committee's files come from
    committee/dvc.yaml, which `dvc repro <stage>` (the root dvc.yaml) never runs."""
    if COMMITTEE_DIR in Path(path).parents:
        return "the committee pipeline", f"dvc repro {COMMITTEE_DIR / 'dvc.yaml'}"
    return f"the {stage} stage", f"dvc repro {stage}"


def run_first(path: Path, stage: str) -> str:
    """The fix for a missing `path` that `stage` writes, e.g. 'run the train stage first (dvc repro
    train)'."""
    what, command = _made_by(path, stage)
    return f"run {what} first ({command})"


def rerun(path: Path, stage: str) -> str:
    """The fix for a bad `path` that `stage` writes, e.g. 'rerun the train stage (dvc repro
    train)'."""
    what, command = _made_by(path, stage)
    return f"rerun {what} ({command})"
