"""The pins (requirements/<set>.txt, `make lock`) agree with pyproject.toml, with each other and
with the MLflow model's requirements. No resolve: only the committed files are read, so the
check does not change when a dependency makes a release (docs/team.md, the pinned environment)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (the pins are for 3.11)")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
SETS = {"base": None, "dev": "dev", "docs": "docs", "team": "team", "gpu": "gpu"}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)")


def normalize(name: str) -> str:
    """PEP 503's normalized project name: `Flask_WTF` and `flask-wtf` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of a pip-compile output. Comments (its `# via` annotations) and
    blank lines aside, every line must be `name==version`: an extra, a marker, a range or an
    option such as --extra-index-url fails, so a hand edit that loosens a pin is caught."""
    pinned: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.fullmatch(line)
        assert match, f"{path.name}:{number}: {line!r} is not a name==version pin"
        assert normalize(match[1]) not in pinned, f"{path.name}:{number}: pinned twice"
        pinned[normalize(match[1])] = match[2]
    return pinned


def set_file(name: str) -> Path:
    return REPO / "requirements" / f"{name}.txt"


def direct_requirements(project: dict, extra: str | None) -> list[Requirement]:
    """What `pip install .[extra]` asks for itself: the base and the extra, through the project's
    references to its own extras (dev's mnist-mlp-pipeline[docs])."""
    found = [Requirement(line) for line in project["dependencies"]]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in map(Requirement, project["optional-dependencies"][name]):
            if normalize(requirement.name) == normalize(project["name"]):
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def disagreements(project: dict, extra: str | None, pinned: dict[str, str]) -> list[str]:
    """Each of pyproject's requirements for the set that the set's pins miss or contradict."""
    problems = []
    for requirement in direct_requirements(project, extra):
        if requirement.marker and not requirement.marker.evaluate():
            continue
        version = pinned.get(normalize(requirement.name))
        if version is None:
            problems.append(f"{requirement} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} does not satisfy {requirement}")
    return problems


def test_the_pins_are_one_file_per_install_set() -> None:
    assert sorted(p.stem for p in (REPO / "requirements").glob("*.txt")) == sorted(SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_line_is_an_exact_pin_and_the_header_names_make_lock(name: str) -> None:
    text = set_file(name).read_text()
    pinned = read_pins(set_file(name))  # fails on anything but name==version
    assert pinned, f"{name}.txt pins nothing"
    assert "#    make lock\n" in text, f"{name}.txt lacks pip-compile's header naming `make lock`"
    assert "/opt/" not in text and "file://" not in text, f"{name}.txt names a local path"


@pytest.mark.parametrize(("name", "extra"), SETS.items())
def test_each_set_pins_what_pyproject_asks_for(name: str, extra: str | None) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    problems = disagreements(project, extra, read_pins(set_file(name)))
    assert not problems, f"requirements/{name}.txt vs pyproject.toml (run make lock): {problems}"


def test_a_package_shared_by_two_sets_has_one_version() -> None:
    """README command 1 installs dev, docs/team.md then team: the second changes nothing."""
    versions: dict[str, dict[str, str]] = {}
    for name in SETS:
        for package, version in read_pins(set_file(name)).items():
            versions.setdefault(package, {})[name] = version
    split = {
        package: by_set for package, by_set in versions.items() if len(set(by_set.values())) > 1
    }
    assert split == {}


def test_each_extra_set_contains_the_base_set() -> None:
    base = read_pins(set_file("base"))
    for name in SETS:
        pinned = read_pins(set_file(name))
        assert base.items() <= pinned.items(), f"{name}.txt lacks base pins"


def test_torch_is_pypis_build_and_matches_the_makefile() -> None:
    """No local label (+cpu, +cu130): `torch==2.14.1` is PyPI's wheel, the same one everywhere."""
    base = read_pins(set_file("base"))
    named = dict(re.findall(r"(torch|torchvision)==(\S+)", (REPO / "Makefile").read_text()))
    assert named == {"torch": base["torch"], "torchvision": base["torchvision"]}
    assert "+" not in base["torch"] + base["torchvision"]


def test_the_checks_catch_a_raised_bound_a_missing_pin_and_a_range(tmp_path: Path) -> None:
    project = {
        "name": "mnist-mlp-pipeline",
        "dependencies": ["numpy>=1.24"],
        "optional-dependencies": {
            "dev": ["pytest>=8.0", "mnist-mlp-pipeline[docs]"],
            "docs": ["MkDocs_Material>=9.5"],
        },
    }
    pinned = {"numpy": "2.4.6", "pytest": "9.2.0", "mkdocs-material": "9.8.2"}
    assert disagreements(project, "dev", pinned) == []
    raised = dict(project, dependencies=["numpy>=3"])
    assert disagreements(raised, None, pinned) == ["numpy==2.4.6 does not satisfy numpy>=3"]
    without_docs = {k: v for k, v in pinned.items() if k != "mkdocs-material"}
    assert disagreements(project, "dev", without_docs) == ["MkDocs_Material>=9.5 is not pinned"]
    loose = tmp_path / "loose.txt"
    loose.write_text("# via x\ntorch>=2.4\n")
    with pytest.raises(AssertionError, match="loose.txt:2: 'torch>=2.4' is not a name==version"):
        read_pins(loose)


def test_log_model_logs_the_base_pins_as_the_models_requirements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What loading and calling the served model imports, at requirements/base.txt's versions (no
    server: MLflow's log_model is replaced by a recorder)."""
    import mlflow.pyfunc
    import torch

    from pipeline.learner.model import MLP, Architecture
    from pipeline.serving import registration
    from pipeline.serving.service import fit_references

    logged: dict = {}
    monkeypatch.setattr(mlflow.pyfunc, "log_model", lambda **kwargs: logged.update(kwargs))
    model = MLP(Architecture(4, (3,)), 0.5, 0.2)
    images = torch.randint(0, 256, (20, 4, 4), dtype=torch.uint8, generator=torch.Generator())
    references = fit_references(model, "cross_entropy", images, images)
    registration.log_model(model, "cross_entropy", references, "m")
    base = read_pins(set_file("base"))
    expected = [f"{name}=={base[name]}" for name in registration.SERVED_REQUIREMENTS]
    assert logged["pip_requirements"] == expected
    assert {"torch", "mlflow", "pillow"} <= set(registration.SERVED_REQUIREMENTS)


def test_the_documented_installs_and_ci_use_the_pins_with_the_venvs_own_pip() -> None:
    readme = (REPO / "README.md").read_text()
    team = (REPO / "docs" / "team.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "&& pip install -r requirements/dev.txt -e . && dvc repro" in readme
    assert "\npip install -r requirements/team.txt -e .\n" in team
    assert "pip install --quiet -r requirements/dev.txt -r requirements/team.txt -e .\n" in ci
    assert "--upgrade pip" not in ci, "CI installs with the pip users have (docs/team.md)"
