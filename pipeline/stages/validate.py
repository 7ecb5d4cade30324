"""Stage `validate`: great-expectations checks on the raw data, the split and the statistics.

A failed check stops `dvc repro` here, before any training. Every check is a built-in GX
expectation, so each one shows in reports/data_validation.json and in Data Docs; relations that
GX has no expectation for (between splits) become derived columns that a built-in expectation
then checks, e.g. `in_both` must be all False.

GX runs offline and quietly: analytics off, an in-memory (ephemeral) context, no progress bars,
Data Docs written only to reports/data_docs/.

Data Docs are the same bytes for the same data (dvc.lock hashes them): every validation carries the
fixed RUN_TIME, and stable_page removes what GX stamps at render time (see there).
"""

from __future__ import annotations

import datetime
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import artifacts, atomic
from pipeline.config import Params
from pipeline.data import labelled
from pipeline.data.datasets import (
    CLASSES,
    DATASETS,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)
from pipeline.data.idx import read_idx
from pipeline.errors import PipelineError
from pipeline.paths import (
    DATA_DOCS_DIR,
    DATA_VALIDATION_FILE,
    RAW_DIR,
    STATS_FILE,
    TRAIN_INDEX_FILE,
    VALID_INDEX_FILE,
)
from pipeline.progress import log

OFFLINE_INDEX = "offline.html"
# The run time of every validation, which Data Docs print and put in the result pages' paths: a
# fixed stand-in, since the pages must not change with the clock. When validate ran is in git's
# and DVC's history, and in the MLflow training run that logs these pages.
RUN_TIME = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# GX's timestamp format (RunIdentifier, batch markers), and the uuid4 it gives HTML elements.
GX_TIMESTAMP = re.compile(r"\b\d{8}T\d{6}\.\d{6}Z\b")
UUID4 = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b")

os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read when great_expectations is imported

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.row_conditions import Column  # noqa: E402

SPLITS = ("train", "valid", "test")
PIXEL_MIN, PIXEL_MAX = 0, 255
IMAGE_COLUMNS = (
    "split",
    "index",
    "label",
    "pixel_min",
    "pixel_max",
    "pixel_mean",
    "nonzero_pixels",
    "content_hash",
)
STATS_COLUMNS = ("mean", "std", "count")
# Columns that identify a failing row in the report and in Data Docs, per table.
ROW_IDS = {
    "images": ["split", "index"],
    "class_shares": ["split", "label"],
    "training_indices": ["index"],
    "stats": [],
}


@dataclass(frozen=True)
class RawData:
    train_images: np.ndarray  # [N, H, W]
    train_labels: np.ndarray  # [N]
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class Expected:
    rows: dict[str, int]  # per split
    training_size: int  # official training images and labelled ones (pipeline/data/labelled.py)
    class_share_tolerance: float
    official_size: int = -1  # official training images alone; -1: training_size (no batches)

    @property
    def official(self) -> int:
        return self.training_size if self.official_size < 0 else self.official_size


def expected_for(
    params: Params, training_size: int, test_size: int, labelled_count: int = 0
) -> Expected:
    """The counts of a dataset version: the official split, plus the labelled images in train."""
    n_valid = params.split.valid_count(training_size)
    return Expected(
        rows={
            "train": training_size - n_valid + labelled_count,
            "valid": n_valid,
            "test": test_size,
        },
        training_size=training_size + labelled_count,
        class_share_tolerance=params.validate_.class_share_tolerance,
        official_size=training_size,
    )


def official_sizes(name: str, raw: RawData) -> tuple[int, int]:
    """Training and test images the data must hold. A named dataset's come from the catalogue, so a
    truncated copy fails the row counts; custom data's from its IDX headers (the reader checks each
    file's length against its header, read_raw that images and labels agree)."""
    if name in DATASETS:
        return DATASETS[name].train_rows, DATASETS[name].test_rows
    return len(raw.train_labels), len(raw.test_labels)


def read_raw(raw_dir: Path) -> RawData:
    """Read the IDX files as stored, any dtype: the pixel checks, not the reader, judge values."""
    arrays = []
    for images_name, labels_name in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        images, labels = read_idx(raw_dir / images_name), read_idx(raw_dir / labels_name)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PipelineError(
                f"{raw_dir}: {images_name} {images.shape} and {labels_name} {labels.shape} are "
                "not N images [N, H, W] with N labels [N]; fix the source files and re-run the "
                "download stage"
            )
        arrays += [images, labels]
    return RawData(*arrays)


def image_features(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image; vectorised except the hash, a plain loop (~0.1 s for 70,000 images)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return pd.DataFrame(
        {
            "label": labels,
            "pixel_min": flat.min(axis=1),
            "pixel_max": flat.max(axis=1),
            "pixel_mean": flat.mean(axis=1, dtype=np.float64),
            "nonzero_pixels": np.count_nonzero(flat, axis=1),
            "content_hash": [hashlib.blake2b(row.data, digest_size=16).hexdigest() for row in flat],
        }
    ).convert_dtypes()  # nullable dtypes, so rows for unknown indices can hold nulls


def image_table(raw: RawData, train_index: np.ndarray, valid_index: np.ndarray) -> pd.DataFrame:
    """One row per image of each split; an index outside the training set gives a row of nulls."""
    training = image_features(raw.train_images, raw.train_labels)
    test = image_features(raw.test_images, raw.test_labels)
    parts = [
        training.reindex(train_index).assign(split="train", index=train_index),
        training.reindex(valid_index).assign(split="valid", index=valid_index),
        test.assign(split="test", index=np.arange(len(test))),
    ]
    return pd.concat(parts, ignore_index=True).loc[:, list(IMAGE_COLUMNS)]


def with_shared_content(images: pd.DataFrame) -> pd.DataFrame:
    """Adds `shared_train_valid`: the image's exact content also occurs in the other split."""
    split, content = images["split"], images["content_hash"]
    in_train = content.isin(content[split == "train"].dropna())
    in_valid = content.isin(content[split == "valid"].dropna())
    shared = ((split == "train") & in_valid) | ((split == "valid") & in_train)
    return images.assign(shared_train_valid=shared.fillna(False).astype(bool))


def index_coverage(images: pd.DataFrame, training_size: int) -> pd.DataFrame:
    """One row per training index and per stray index a split names: where each one went."""
    split, index = images["split"], images["index"]
    train = index[split == "train"].dropna().to_numpy(dtype=np.int64)
    valid = index[split == "valid"].dropna().to_numpy(dtype=np.int64)
    every = np.union1d(np.arange(training_size), np.union1d(train, valid))
    in_train, in_valid = np.isin(every, train), np.isin(every, valid)
    return pd.DataFrame(
        {
            "index": every,
            "official": (every >= 0) & (every < training_size),
            "in_train_or_valid": in_train | in_valid,
            "in_both": in_train & in_valid,
        }
    )


def class_shares(images: pd.DataFrame, training_labels: np.ndarray) -> pd.DataFrame:
    """One row per split and class: its share of the split against its share of the training set."""
    labelled = images.dropna(subset=["split", "label"])
    classes = np.union1d(
        CLASSES, np.union1d(training_labels, labelled["label"].to_numpy(dtype=np.int64))
    )
    counts = pd.crosstab(labelled["split"], labelled["label"].astype(np.int64)).reindex(
        index=list(SPLITS), columns=classes, fill_value=0
    )
    shares = counts.div(counts.sum(axis=1).replace(0, 1), axis=0)
    reference = (
        pd.Series(training_labels.astype(np.int64))
        .value_counts(normalize=True)
        .reindex(classes, fill_value=0.0)
    )
    table = pd.DataFrame(
        {
            "split": np.repeat(SPLITS, len(classes)),
            "label": np.tile(classes, len(SPLITS)),
            "count": counts.to_numpy().ravel(),
            "share": shares.to_numpy().ravel(),
            "training_share": np.tile(reference.to_numpy(), len(SPLITS)),
        }
    )
    return table.assign(share_gap=(table["share"] - table["training_share"]).abs())


def stats_table(stats: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({key: [stats.get(key)] for key in STATS_COLUMNS})


def _expect(name: str, says: str, kind: type[gxe.Expectation], **kwargs: Any) -> gxe.Expectation:
    """An expectation with a stable name (report, error message) and a sentence (Data Docs)."""
    return kind(**kwargs, description=f"{name}: {says}", meta={"name": name, "checks": says})


def suites(expected: Expected) -> dict[str, list[gxe.Expectation]]:
    """The expectations per table, in the order the report lists them."""
    low, high = min(CLASSES), max(CLASSES)
    rows = [
        _expect(
            f"rows_{s}",
            f"{s} has exactly {expected.rows[s]:,} images",
            gxe.ExpectTableRowCountToEqual,
            value=expected.rows[s],
            row_condition=Column("split") == s,
        )
        for s in SPLITS
    ]
    nulls = [
        _expect(
            f"no_nulls_{col}",
            f"every image has a {col}",
            gxe.ExpectColumnValuesToNotBeNull,
            column=col,
        )
        for col in IMAGE_COLUMNS
    ]
    classes = [
        _expect(
            f"all_classes_{s}",
            f"all classes {low}-{high} occur in {s}",
            gxe.ExpectColumnDistinctValuesToContainSet,
            column="label",
            value_set=list(CLASSES),
            row_condition=Column("split") == s,
        )
        for s in SPLITS
    ]
    images = (
        rows
        + nulls
        + [
            _expect(
                "labels_in_range",
                f"every label is a class id {low}-{high}",
                gxe.ExpectColumnValuesToBeBetween,
                column="label",
                min_value=low,
                max_value=high,
            ),
            *classes,
            _expect(
                "pixel_min_in_range",
                f"no pixel below {PIXEL_MIN}",
                gxe.ExpectColumnValuesToBeBetween,
                column="pixel_min",
                min_value=PIXEL_MIN,
                max_value=PIXEL_MAX,
            ),
            _expect(
                "pixel_max_in_range",
                f"no pixel above {PIXEL_MAX}",
                gxe.ExpectColumnValuesToBeBetween,
                column="pixel_max",
                min_value=PIXEL_MIN,
                max_value=PIXEL_MAX,
            ),
            _expect(
                "no_blank_images",
                "every image has a non-zero pixel",
                gxe.ExpectColumnValuesToBeBetween,
                column="nonzero_pixels",
                min_value=1,
            ),
            _expect(
                "unique_index_per_split",
                "no split names an image twice",
                gxe.ExpectCompoundColumnsToBeUnique,
                column_list=["split", "index"],
            ),
            _expect(
                "no_shared_content_train_valid",
                "no image content occurs in both train and valid",
                gxe.ExpectColumnValuesToBeInSet,
                column="shared_train_valid",
                value_set=[False],
            ),
        ]
    )
    tolerance, n = expected.class_share_tolerance, expected.training_size
    official = expected.official
    return {
        "images": images,
        "class_shares": [
            _expect(
                "class_share_within_tolerance",
                f"each class's share of each split is within {tolerance} of its share of the "
                "training set",
                gxe.ExpectColumnValuesToBeBetween,
                column="share_gap",
                max_value=tolerance,
            ),
        ],
        "training_indices": [
            _expect(
                "no_index_in_train_and_valid",
                "no training image is in both train and valid",
                gxe.ExpectColumnValuesToBeInSet,
                column="in_both",
                value_set=[False],
            ),
            _expect(
                "train_valid_cover_training_set",
                f"train and valid together are exactly training images 0-{n - 1}",
                gxe.ExpectColumnPairValuesToBeEqual,
                column_A="official",
                column_B="in_train_or_valid",
            ),
        ],
        "stats": [
            *(
                _expect(
                    f"stats_{col}_present",
                    f"{STATS_FILE} gives the {col}",
                    gxe.ExpectColumnValuesToNotBeNull,
                    column=col,
                )
                for col in STATS_COLUMNS
            ),
            _expect(
                "stats_mean_plausible",
                "the pixel mean is in (0, 1)",
                gxe.ExpectColumnValuesToBeBetween,
                column="mean",
                min_value=0,
                max_value=1,
                strict_min=True,
                strict_max=True,
            ),
            _expect(
                "stats_std_plausible",
                "the pixel std is in (0, 0.5]",
                gxe.ExpectColumnValuesToBeBetween,
                column="std",
                min_value=0,
                max_value=0.5,
                strict_min=True,
            ),
            _expect(
                "stats_count_matches",
                f"the statistics cover all {official:,} official training images",
                gxe.ExpectColumnValuesToBeBetween,
                column="count",
                min_value=official,
                max_value=official,
            ),
        ],
    }


def _builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA:
        return None
    return str(value)


def _observed(result: dict[str, Any]) -> Any:
    """The one value that tells what GX saw: observed value, missing set or a few bad values."""
    if result.get("observed_value") is not None:
        observed: Any = result["observed_value"]
    elif "partial_missing_list" in result:
        observed = {"missing": result["partial_missing_list"]}
    elif "unexpected_count" in result:
        examples = result.get("partial_unexpected_index_list") or result.get(
            "partial_unexpected_list", []
        )
        observed = {"unexpected_count": result["unexpected_count"], "examples": examples}
    else:
        observed = None
    return json.loads(json.dumps(observed, default=_builtin))


def _errors(info: dict[str, Any] | None) -> list[str]:
    """Messages of exceptions GX caught; it nests them per metric, or not, depending on where they
    arose."""
    if not info:
        return []
    if "raised_exception" in info:
        return [info["exception_message"]] if info["raised_exception"] else []
    return list(
        dict.fromkeys(
            m for value in info.values() if isinstance(value, dict) for m in _errors(value)
        )
    )


def _expectation_name(meta: dict[str, Any] | None) -> str:
    """The stable name `_expect` puts in each expectation's meta; GX copies it into the result."""
    assert meta is not None
    return str(meta["name"])


def _entry(table: str, outcome: Any) -> dict[str, Any]:
    config = outcome.expectation_config
    error = "; ".join(_errors(outcome.exception_info))
    return {
        "name": config.meta["name"],
        "success": bool(outcome.success),
        "observed": f"error: {error}" if error else _observed(outcome.result),
        "checks": config.meta["checks"],
        "table": table,
        "expectation": config.type,
    }


def _context() -> Any:
    """In memory, no analytics, no progress bars, and no Data Docs site but the one we add."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def offline_index(docs_dir: Path, entries: list[dict[str, Any]]) -> str:
    """A plain-HTML list of the result pages: GX's own index.html draws its list with JavaScript
    from public CDNs, so offline it shows no runs."""
    rows = []
    for table in dict.fromkeys(entry["table"] for entry in entries):
        checks = [entry for entry in entries if entry["table"] == table]
        passed = sum(entry["success"] for entry in checks)
        links = [f'<a href="expectations/{table}.html">suite</a>']
        links += [
            f'<a href="{html.escape(page.relative_to(docs_dir).as_posix())}">result</a>'
            for page in sorted(docs_dir.glob(f"validations/{table}/**/*.html"))
        ]
        verdict = "passed" if passed == len(checks) else "FAILED"
        rows.append(
            f"<tr><td>{html.escape(table)}</td><td>{verdict}: {passed}/{len(checks)}</td>"
            f"<td>{' '.join(links)}</td></tr>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>Data validation</title>\n"
        "<h1>Data validation</h1>\n<table border=1 cellpadding=4>\n"
        "<tr><th>table</th><th>expectations</th><th>pages</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
    )


def stable_page(page: str) -> str:
    """A Data Docs page without what GX stamps on it at render time, so the same data gives the
    same bytes.

    With the run time fixed (RUN_TIME), GX 1.x still writes three values per render: the load time
    of each batch (`ge_load_time` in its batch markers), a `?d=<now>` cache-buster on its logo's
    URL, both in its compact timestamp form, and a random uuid4 in each collapsible block's HTML
    id. Every such timestamp becomes RUN_TIME's, and each uuid its number on the page in order of
    first appearance, which keeps the ids unique and the links to them right. A GX upgrade that
    stamps something new fails tests/test_validate.py's two-run comparison.
    """
    page = GX_TIMESTAMP.sub(RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ"), page)
    numbers: dict[str, str] = {}
    return UUID4.sub(lambda m: numbers.setdefault(m[0], f"id{len(numbers) + 1}"), page)


def _build_docs(context: Any, docs_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Render Data Docs into a staging folder, then swap it in: the old docs stay until the new are
    complete."""
    with atomic.writable_dir(docs_dir.parent):
        for leftover in docs_dir.parent.glob(f".{docs_dir.name}.*"):
            shutil.rmtree(leftover)  # from a run that was killed before it could clean up
        staging = Path(tempfile.mkdtemp(dir=docs_dir.parent, prefix=f".{docs_dir.name}."))
    retired = staging.with_name(staging.name + ".old")
    try:
        context.add_data_docs_site(
            site_name="pipeline",
            site_config={
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(staging.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.build_data_docs(site_names=["pipeline"])
        for page in staging.rglob("*.html"):
            page.write_bytes(stable_page(page.read_bytes().decode()).encode())
        (staging / OFFLINE_INDEX).write_text(offline_index(staging, entries))
        if docs_dir.exists():
            os.replace(docs_dir, retired)
        os.replace(staging, docs_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def run_checks(
    tables: dict[str, pd.DataFrame], expected: Expected, docs_dir: Path | None
) -> list[dict[str, Any]]:
    """Validate each table against its suite; one entry per expectation, in suite order."""
    context = _context()
    source = context.data_sources.add_pandas("pipeline")
    run_id = RunIdentifier(run_name="validate", run_time=RUN_TIME)
    entries = []
    for table, expectations in suites(expected).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)
        )
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
        if ROW_IDS[table]:
            result_format["unexpected_index_column_names"] = ROW_IDS[table]
        result = definition.run(
            batch_parameters={"dataframe": tables[table]},
            result_format=result_format,
            run_id=run_id,
        )
        by_name = {
            _expectation_name(outcome.expectation_config.meta): outcome
            for outcome in result.results
        }
        entries += [_entry(table, by_name[_expectation_name(e.meta)]) for e in expectations]
    if docs_dir is not None:
        _build_docs(context, docs_dir, entries)
    return entries


def duplicated_test_images(images: pd.DataFrame) -> int:
    """Test images whose exact content is also in the training set: reported, not failed."""
    split, content = images["split"], images["content_hash"]
    training = content[split.isin(["train", "valid"])].dropna()
    return int(((split == "test") & content.isin(training)).sum())


def validate(
    images: pd.DataFrame,
    training_labels: np.ndarray,
    stats: dict[str, Any],
    expected: Expected,
    docs_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every check on the image table; the report that data_validation.json holds."""
    # The class shares judge the split's draw, so on the official images: a labelled batch may
    # hold more of some digits on purpose (those the model confuses).
    official = ~((images["split"] == "train") & (images["index"] >= expected.official)).fillna(
        False
    )
    tables = {
        "images": with_shared_content(images),
        "class_shares": class_shares(images[official], training_labels[: expected.official]),
        "training_indices": index_coverage(images, expected.training_size),
        "stats": stats_table(stats),
    }
    entries = run_checks(tables, expected, docs_dir)
    counts = images["split"].value_counts().reindex(list(SPLITS), fill_value=0)
    return {
        "success": all(entry["success"] for entry in entries),
        "counts": {split: int(counts[split]) for split in SPLITS},
        "expected_counts": expected.rows,
        "stats": {key: stats.get(key) for key in STATS_COLUMNS},
        "reported": {"test_train_duplicates": duplicated_test_images(images)},
        "expectations": entries,
    }


def failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in report["expectations"] if not entry["success"]]


def main(params: Params) -> None:
    raw = read_raw(RAW_DIR)
    sizes = official_sizes(params.data.name, raw)
    batches = labelled.read_manifest()
    extra = labelled.load()
    if extra is not None:  # the labelled images follow the official training images
        raw = RawData(
            *labelled.append((raw.train_images, raw.train_labels), extra),
            raw.test_images,
            raw.test_labels,
        )
    images = image_table(
        raw, artifacts.read_index(TRAIN_INDEX_FILE), artifacts.read_index(VALID_INDEX_FILE)
    )
    expected = expected_for(params, *sizes, labelled_count=0 if extra is None else len(extra[1]))
    report = validate(images, raw.train_labels, artifacts.read_stats(), expected, DATA_DOCS_DIR)
    report["dataset_version"] = labelled.version(batches)
    # No page paths here: they carry GX's run time, and train depends on this file.
    report["data_docs"] = {
        "index": str(DATA_DOCS_DIR / "index.html"),
        "offline_index": str(DATA_DOCS_DIR / OFFLINE_INDEX),
    }
    artifacts.write_validation(report)
    counts = ", ".join(f"{report['counts'][s]:,} {s}" for s in SPLITS)
    passed = sum(entry["success"] for entry in report["expectations"])
    log(f"validate: {passed}/{len(report['expectations'])} expectations passed on {counts}")
    log(
        f"validate: {report['reported']['test_train_duplicates']} test images duplicate a "
        "training image (reported only)"
    )
    failed = failures(report)
    for entry in failed:
        log(
            f"failed: {entry['name']} ({entry['checks']}), observed {json.dumps(entry['observed'])}"
        )
    if failed:
        names = ", ".join(entry["name"] for entry in failed)
        raise PipelineError(
            f"data validation failed: {names}; see {DATA_VALIDATION_FILE} and "
            f"{DATA_DOCS_DIR / 'index.html'}"
        )
