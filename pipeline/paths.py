"""Where each stage reads and writes, relative to the repository root (DVC runs stages there).

dvc.yaml names the same paths; keep the two in step.
"""

from dataclasses import dataclass
from pathlib import Path

RAW_DIR = Path("data/raw")  # the four IDX files, as downloaded and verified
CHECKSUMS_FILE = RAW_DIR / "checksums.json"  # each raw file's MD5, SHA-256 and source
UPSTREAM_FILE = Path("data/upstream.json")  # git-tracked: see pipeline/data/upstream.py
STATS_FILE = Path("data/stats.json")  # training pixels' mean and std, for normalisation
SPLIT_DIR = Path("data/split")  # the train/valid split
TRAIN_INDEX_FILE = SPLIT_DIR / "train.npy"  # indices of the training images that train on
VALID_INDEX_FILE = SPLIT_DIR / "valid.npy"  # indices of the validation images
SPLIT_SUMMARY_FILE = SPLIT_DIR / "summary.json"  # counts per split and class
# Labelled batches (pipeline/data/labelled.py): the files, DVC-tracked by data/labelled.dvc once a
# batch exists, and the manifest git keeps, which the stages that read the batches depend on.
LABELLED_DIR = Path("data/labelled")  # the batches' IDX files
LABELLED_MANIFEST = Path("data/labelled.json")  # each batch's name, MD5s and counts

MODELS_DIR = Path("models")
MODEL_FILE = MODELS_DIR / "model.pt"  # the best epoch's weights, loaded without pickle
LAST_CHECKPOINT_FILE = MODELS_DIR / "last.pt"  # resume state of an interrupted train
MLFLOW_RUN_FILE = MODELS_DIR / "mlflow_run.json"  # the training run's id and experiment
OOD_REFERENCE_FILE = MODELS_DIR / "ood_reference.json"  # beside the checkpoint predict reads
# The validation split as the model answers it: what `monitor` compares records with (drift.py)
MONITOR_REFERENCE_FILE = MODELS_DIR / "monitor_reference.npz"

REPORTS_DIR = Path("reports")
DATA_VALIDATION_FILE = REPORTS_DIR / "data_validation.json"  # every data check and its result
DATA_DOCS_DIR = REPORTS_DIR / "data_docs"  # great-expectations' Data Docs, offline HTML
TRAIN_HISTORY_FILE = REPORTS_DIR / "train_history.csv"  # loss, accuracy and lr per epoch
GRAD_NORMS_FILE = REPORTS_DIR / "grad_norms.csv"  # gradient norm per layer per epoch
METRICS_FILE = REPORTS_DIR / "metrics.json"  # test and validation metrics of the best epoch
PER_CLASS_FILE = REPORTS_DIR / "per_class.csv"  # precision, recall and F1 per digit
PREDICTIONS_FILE = REPORTS_DIR / "predictions.csv"  # each test image's label, digit, confidence
FIGURES_DIR = REPORTS_DIR / "figures"  # the report's PNG figures
REPORT_HTML_FILE = REPORTS_DIR / "report.html"  # the report, one self-contained page
REPORT_MD_FILE = REPORTS_DIR / "report.md"  # the same report as Markdown
PROMOTION_FILE = REPORTS_DIR / "promotion.json"  # the gate's decision and every reason
MONITORING_FILE = REPORTS_DIR / "monitoring.json"  # `python -m pipeline monitor`, not a stage
MONITORING_HTML_FILE = REPORTS_DIR / "monitoring.html"  # the monitor's page of figures

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
