"""params.yaml is validated before any work: each kind of mistake names the key, the value and
what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import Params, load_params, parse_params
from pipeline.errors import PipelineError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_holds_exactly_the_defaults():
    assert load_params(REPO_PARAMS) == Params()
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    listed = {f"{section}.{key}" for section, values in raw.items() for key in values}
    assert listed == set(Params().flat()), "params.yaml must list every key with its default"


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n")
    assert load_params(path) == Params()


def test_values_are_read_and_ints_are_fine_where_floats_are_expected():
    params = parse_params(
        {"train": {"lr": 1, "epochs": 3}, "validate": {"class_share_tolerance": 0.05}}
    )
    assert params.train.lr == 1.0 and params.train.epochs == 3
    assert params.validate_.class_share_tolerance == 0.05
    assert params.flat()["validate.class_share_tolerance"] == 0.05
    assert params.flat()["model.hidden"] == [250, 100]


def test_params_are_immutable():
    with pytest.raises(ValidationError):
        Params().train.lr = 0.1  # type: ignore[misc]


def problem(raw: dict) -> str:
    with pytest.raises(PipelineError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert message.startswith("invalid params: ") and "\n" not in message
    return message.removeprefix("invalid params: ")


@pytest.mark.parametrize(
    "raw, expected",
    [
        # out of range
        ({"train": {"lr": -1}}, "train.lr must be greater than 0, got -1"),
        ({"train": {"lr": 11}}, "train.lr must be less than or equal to 10, got 11"),
        ({"split": {"valid_fraction": 1.0}}, "split.valid_fraction must be less than 1, got 1.0"),
        ({"model": {"hidden": [250, 0]}}, "model.hidden[1] must be greater than 0, got 0"),
        ({"model": {"hidden": []}}, "model.hidden must have at least 1 item(s), got []"),
        (
            {"report": {"tsne_samples": 10}},
            "report.tsne_samples must be greater than or equal to 50, got 10",
        ),
        # wrong type: no silent coercion
        ({"train": {"lr": "0.1"}}, "train.lr must be a valid number, got '0.1'"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be a valid integer, got 2.5"),
        ({"train": {"epochs": True}}, "train.epochs must be a valid integer, got True"),
        ({"train": {"amp": "yes"}}, "train.amp must be a valid boolean, got 'yes'"),
        ({"data": {"mirrors": "http://m/"}}, "data.mirrors must be a valid list, got 'http://m/'"),
        (
            {"data": {"mirrors": [""]}},
            "data.mirrors[0] string should have at least 1 character, got ''",
        ),
        ({"train": 5}, "train must be a mapping of keys to values, got 5"),
        ({"validate": [1]}, "validate must be a mapping of keys to values, got [1]"),
        # bad literal
        (
            {"data": {"name": "emnist"}},
            "data.name must be 'mnist', 'fashion-mnist', 'kmnist' or 'custom', got 'emnist'",
        ),
        ({"data": {"image_size": 32}}, "data.image_size must be 28 or 16, got 32"),
        ({"train": {"optimizer": "Adam"}}, "train.optimizer must be 'adam' or 'sgd', got 'Adam'"),
        # data.md5
        (
            {"data": {"name": "custom", "md5": {"t10k-labels-idx1-ubyte.gz": "abc"}}},
            "data.md5 must give 32 hex digits per file, got 'abc' for t10k-labels-idx1-ubyte.gz",
        ),
        (
            {"data": {"md5": {"t10k-labels-idx1-ubyte.gz": "0" * 32}}},
            "data.md5 is only used with data.name custom (data.name is 'mnist'); "
            "the official checksums apply, so remove data.md5",
        ),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, expected):
    assert problem(raw) == expected


def test_unknown_keys_list_the_allowed_ones():
    message = problem({"trian": {}})
    assert re.fullmatch(
        r"trian is not a known key \(allowed: numerics, data, split, validate, model, .*\)",
        message,
    )
    message = problem({"train": {"learning_rate": 0.1}})
    assert re.fullmatch(
        r"train\.learning_rate is not a known key \(allowed: optimizer, lr, .*\)", message
    )
    message = problem({"validate": {"tolerance": 0.1}})
    assert message.startswith(
        "validate.tolerance is not a known key (allowed: class_share_tolerance"
    )


def test_the_python_name_validate_underscore_is_no_second_spelling_of_validate():
    assert problem({"validate_": {"class_share_tolerance": 0.5}}).startswith(
        "validate_ is not a known key (allowed: numerics, data, split, validate, model,"
    )


def test_every_problem_is_reported_at_once():
    message = problem({"train": {"lr": 0, "epochs": 0}, "model": {"activation": "gelu"}})
    assert message.count("; ") == 2
    assert "train.lr must be greater than 0, got 0" in message
    assert "train.epochs must be greater than 0, got 0" in message
    assert "model.activation must be 'relu', 'sigmoid' or 'tanh', got 'gelu'" in message


def test_invalid_name_does_not_also_blame_md5():
    assert problem({"data": {"name": "x", "md5": {}}}).startswith("data.name must be")


def load_problem(tmp_path: Path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as caught:
        load_params(path)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_yaml_syntax_error_is_one_line_with_position(tmp_path):
    message = load_problem(tmp_path, "train:\n  lr: [0.1\n")
    path = re.escape(str(tmp_path / "params.yaml"))
    assert re.fullmatch(
        rf"{path} is not valid YAML: .* at line 3, column 1; fix the syntax", message
    )


def test_duplicate_key_is_an_error_not_last_wins(tmp_path):
    message = load_problem(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n")
    assert message.endswith(
        "is not valid YAML: duplicate key 'lr' at line 3, column 3; fix the syntax"
    )


@pytest.mark.parametrize("key", ["[a, b]", "{a: 1}"])
def test_a_list_or_mapping_as_key_is_an_error_with_position(tmp_path, key):
    message = load_problem(tmp_path, f"data:\n  {key}: 1\n")
    assert message.endswith(
        "is not valid YAML: found unhashable key at line 2, column 3; fix the syntax"
    )


@pytest.mark.parametrize(
    "text, kind", [("- 1\n- 2\n", "list"), ("just text\n", "str"), ("3\n", "int")]
)
def test_non_mapping_yaml(tmp_path, text, kind):
    assert load_problem(tmp_path, text).endswith(
        f"params.yaml must hold a mapping of sections, got {kind}"
    )


def test_missing_and_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = re.escape(str(tmp_path))
    with pytest.raises(
        PipelineError, match=rf"^nope\.yaml not found in {here}; run from the repository root$"
    ):
        load_params(Path("nope.yaml"))
    with pytest.raises(
        PipelineError, match=r"^cannot read \. \(.*Is a directory.*\); point --params at a readable"
    ):
        load_params(Path("."))
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PipelineError, match=r"^cannot read binary\.yaml \("):
        load_params(Path("binary.yaml"))
