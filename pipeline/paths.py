"""Where each stage reads and writes, relative to the repository root (DVC runs stages there).

dvc.yaml names the same paths; keep the two in step.
"""

from pathlib import Path

RAW_DIR = Path("data/raw")
CHECKSUMS_FILE = RAW_DIR / "checksums.json"
UPSTREAM_FILE = Path("data/upstream.json")  # git-tracked: see pipeline/upstream.py
STATS_FILE = Path("data/stats.json")
SPLIT_DIR = Path("data/split")
TRAIN_INDEX_FILE = SPLIT_DIR / "train.npy"
VALID_INDEX_FILE = SPLIT_DIR / "valid.npy"
SPLIT_SUMMARY_FILE = SPLIT_DIR / "summary.json"

MODELS_DIR = Path("models")
MODEL_FILE = MODELS_DIR / "model.pt"
LAST_CHECKPOINT_FILE = MODELS_DIR / "last.pt"
MLFLOW_RUN_FILE = MODELS_DIR / "mlflow_run.json"
OOD_REFERENCE_FILE = MODELS_DIR / "ood_reference.json"  # beside the checkpoint predict reads

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
