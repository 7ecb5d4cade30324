"""The one place that reads params.yaml and turns it into a typed, validated `Params` object.

Types, bounds and defaults only: every stage depends on this file, so what each param means
lives in params.yaml's comments (docs/parameters.md is generated from both). Unknown keys, wrong
types and out-of-range values are rejected before any stage does work, naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")

PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Strict: no unknown keys, no silent "10" -> 10 coercion, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    name: Literal["mnist", "fashion-mnist", "kmnist", "custom"] = "mnist"
    mirrors: list[Annotated[str, Field(min_length=1)]] = []
    md5: dict[str, str] | None = None
    image_size: Literal[28, 16] = 28
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)

    @field_validator("mirrors")
    @classmethod
    def _no_credentials(cls, value: list[str]) -> list[str]:
        for i, mirror in enumerate(value):
            try:
                parts = urllib.parse.urlsplit(mirror)
            except ValueError:  # not a valid URL: the download stage names it and the fix
                continue
            if parts.username is not None or parts.password is not None:
                raise ValueError(
                    f"entry {i} carries credentials (user:password@), which would be committed "
                    "with params.yaml and dvc.lock and logged to MLflow; give that URL in the "
                    "MNIST_MIRROR environment variable instead"
                )
        return value

    @field_validator("md5")
    @classmethod
    def _md5_hex(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        # Messages of these ValueErrors are complete: _describe adds no "got ...".
        name = info.data.get("name", "custom")  # absent when data.name itself is invalid
        if value is not None and name != "custom":
            raise ValueError(
                f"is only used with data.name custom (data.name is {name!r}); "
                "the official checksums apply, so remove data.md5"
            )
        for fname, digest in (value or {}).items():
            if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(f"must give 32 hex digits per file, got {digest!r} for {fname}")
        return value


class SplitParams(Section):
    valid_fraction: float = Field(default=0.1, gt=0, lt=1)
    seed: int = Field(default=12345, ge=0)
    stratify: bool = False

    def valid_count(self, n: int) -> int:
        """Validation set size out of n training images: what split draws and validate expects."""
        return round(n * self.valid_fraction)


class ValidateParams(Section):
    class_share_tolerance: float = Field(default=0.02, gt=0, le=1)


class ModelParams(Section):
    hidden: list[PositiveInt] = Field(default=[250, 100], min_length=1)
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    output_activation: Literal["none", "sigmoid"] = "none"
    dropout: float = Field(default=0.0, ge=0, lt=1)


class AugmentParams(Section):
    rotation_deg: float = Field(default=5.0, ge=0, le=180)
    crop_padding: int = Field(default=2, ge=0, le=8)
    scale: float = Field(default=0.0, ge=0, lt=1)
    elastic_alpha: float = Field(default=0.0, ge=0)
    elastic_sigma: float = Field(default=4.0, gt=0)
    interpolation: Literal["nearest", "bilinear"] = "nearest"


class TrainParams(Section):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=0.001, gt=0, le=10)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["none", "cosine", "onecycle"] = "cosine"
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    batch_size: int = Field(default=64, gt=0, le=65536)
    epochs: int = Field(default=10, gt=0, le=10000)
    seed: int = Field(default=12345, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=1, ge=0, le=1024)
    amp: bool = False
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class CommitteeParams(Section):
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[1, 2, 3, 4, 5], min_length=2)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(
                f"must not repeat a seed (a repeat trains the same member), got {value}"
            )
        return value


class EvaluateParams(Section):
    batch_size: int = Field(default=2000, gt=0)


class ReportParams(Section):
    tsne_samples: int = Field(default=2000, ge=50, le=10000)
    tsne_perplexity: float = Field(default=30.0, gt=1)
    seed: int = Field(default=0, ge=0)


class MlflowParams(Section):
    experiment: str = Field(default="mnist-mlp", min_length=1)
    registered_model: str = Field(default="mnist-mlp", min_length=1)
    system_metrics: bool = True


class PromoteParams(Section):
    min_delta: float = Field(default=0.0, ge=0, le=1)
    class_drop_p: float = Field(default=0.01, gt=0, lt=1)
    max_class_drop: float = Field(default=1.0, ge=0, le=100)
    max_ece_increase: float = Field(default=0.01, ge=0, le=1)
    main_branch: str = Field(default="main", min_length=1)
    from_experiments: bool = False


class MonitorParams(Section):
    days: float = Field(default=7.0, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    min_records: int = Field(default=100, ge=10)
    experiment: Annotated[str, Field(min_length=1)] = "monitoring"


class NumericsParams(Section):
    portable: bool = True


class Params(Section):
    numerics: NumericsParams = NumericsParams()
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    augment: AugmentParams = AugmentParams()
    train: TrainParams = TrainParams()
    committee: CommitteeParams = CommitteeParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()
    promote: PromoteParams = PromoteParams()
    monitor: MonitorParams = MonitorParams()

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the form MLflow params and DVC's `-S` use."""
        flat: dict[str, Any] = {}
        for section, values in self.model_dump(by_alias=True).items():
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        return flat


def _describe(error: ErrorDetails) -> str:
    key = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).lstrip(".")
    if error["type"] == "extra_forbidden":
        section, _, _ = key.rpartition(".")
        owner: type[BaseModel] = Params
        if section:
            annotation = Params.model_fields[
                section if section != "validate" else "validate_"
            ].annotation
            assert isinstance(annotation, type) and issubclass(
                annotation, BaseModel
            )  # every section is one
            owner = annotation
        allowed = ", ".join(f.alias or name for name, f in owner.model_fields.items())
        return f"{key} is not a known key (allowed: {allowed})"
    if error["type"] == "value_error":
        return f"{key} {error['ctx']['error']}"
    if error["type"] in ("model_type", "dict_type"):
        message = "must be a mapping of keys to values"
    elif error["type"] == "too_short":
        message = f"must have at least {error['ctx']['min_length']} item(s)"
    else:
        message = error["msg"]
        message = message[0].lower() + message[1:]
        message = message.replace("input should be", "must be")
    return f"{key} {message}, got {error['input']!r}"


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate an already-parsed mapping; raises PipelineError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise PipelineError(f"invalid params: {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A key given twice is a mistake (PyYAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # `[a, b]: 1`: PyYAML checks too, after `seen` fails
                raise yaml.constructor.ConstructorError(
                    None, None, "found unhashable key", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's messages span several lines; the CLI prints one."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_params(path: Path = PARAMS_FILE) -> Params:
    if not path.exists():
        raise PipelineError(f"{path} not found in {Path.cwd()}; run from the repository root")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(
            f"cannot read {path} ({exc}); point --params at a readable YAML file"
        ) from None
    except yaml.YAMLError as exc:
        raise PipelineError(
            f"{path} is not valid YAML: {_yaml_problem(exc)}; fix the syntax"
        ) from None
    if raw is not None and not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)
