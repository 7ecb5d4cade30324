"""dvc.yaml against the code: each stage's deps are exactly the pipeline modules it imports, its
outs hold every path of paths.py it writes, and no stage imports another.

Imports are found by static analysis (transitively, imports inside functions included), so that
DVC reruns a stage when, and only when, code it runs has changed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CMD = re.compile(r"python -m pipeline (\w+)(?: --[\w-]+(?: \$\{item\})?)*")
# The root pipeline, and the committee's (kept out of a plain `dvc repro`); stage names of the
# latter carry its file's name, as DVC shows them.
DVC_FILES = ("dvc.yaml", "committee/dvc.yaml")


def module_file(name: str, package: Path) -> Path | None:
    """pipeline/<a>/<b>.py for the dotted module name "a.b" inside `package`, if it exists."""
    path = package / f"{name.replace('.', '/')}.py"
    return path if path.is_file() else None


def direct_imports(path: Path, package: Path) -> set[str]:
    """Dotted names, inside `package`, of the modules `path` imports: import pipeline.a.b /
    from pipeline.a import b / from pipeline.a.b import c. Subpackages' __init__.py files hold
    only their docstring (test_subpackage_inits_hold_only_a_docstring), so they are not deps."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix(f"{package.name}.")
                for a in node.names
                if a.name.startswith(f"{package.name}.")
            }
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: use absolute imports"
            if node.module != package.name and not (node.module or "").startswith(
                f"{package.name}."
            ):
                continue
            base = (node.module or "").removeprefix(package.name).lstrip(".")
            for alias in node.names:  # from pipeline.a import b: b is a module, or a name in a
                inner = f"{base}.{alias.name}" if base else alias.name
                if module_file(inner, package):
                    found.add(inner)
                elif base:  # a name defined in module a (or in a subpackage's __init__.py)
                    found.add(base)
    return found


def closure(module: str, package: Path) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        assert module_file(name, package), f"{package.name}.{name} is imported but has no file"
        seen.add(name)
        todo.extend(direct_imports(module_file(name, package), package))  # type: ignore[arg-type]
    return seen


def entry_imports(package: Path) -> set[str]:
    """What `python -m pipeline` loads before any stage: pipeline/__main__.py's module-level
    imports (numerics pins the kernels there), part of every stage's process."""
    found: set[str] = set()
    for node in ast.parse((package / "__main__.py").read_text()).body:
        module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
        if module == package.name:  # from pipeline import x
            found |= {a.name for a in node.names}
        elif module.startswith(f"{package.name}."):  # from pipeline.x import y
            inner = module.removeprefix(f"{package.name}.")
            found |= {
                f"{inner}.{a.name}" if module_file(f"{inner}.{a.name}", package) else inner
                for a in node.names
            }
    return set().union(*(closure(name, package) for name in found))


def dep_path(module: str) -> str:
    return f"pipeline/{module.replace('.', '/')}.py"


def pipeline_stages() -> dict[str, tuple[str, list[str]]]:
    found = {}
    for dvc_file in DVC_FILES:
        stages = yaml.safe_load((REPO / dvc_file).read_text())["stages"]
        prefix = "" if dvc_file == "dvc.yaml" else f"{dvc_file}:"
        for name, stage in stages.items():
            stage = stage.get("do", stage)  # a foreach stage: its template
            match = CMD.fullmatch(str(stage.get("cmd", "")).strip())
            if match:
                found[prefix + name] = (match.group(1), [str(d) for d in stage.get("deps", [])])
    return found


def test_committee_stages_are_checked_too():
    assert {
        "committee/dvc.yaml:member",
        "committee/dvc.yaml:committee",
        "committee/dvc.yaml:evaluate",
        "committee/dvc.yaml:report",
        "committee/dvc.yaml:promote",
    } <= set(pipeline_stages())


def test_dvc_yaml_has_pipeline_stages():
    assert "download" in pipeline_stages()


@pytest.mark.parametrize("stage", sorted(pipeline_stages()))
def test_stage_deps_are_exactly_its_imports(stage):
    module, deps = pipeline_stages()[stage]
    listed = {d for d in deps if re.fullmatch(r"pipeline/.+\.py", d)}
    package = REPO / "pipeline"
    needed = {dep_path(m) for m in closure(f"stages.{module}", package) | entry_imports(package)}
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: deps missing {missing or 'nothing'}, "
        f"deps listing modules it does not import {extra or 'nothing'}"
    )


def test_only_the_cli_imports_a_stage():
    """Shared code lives in the subpackages; a stage is only an entry (import-linter checks the
    same in .ci/run, with the layers of pyproject.toml)."""
    package = REPO / "pipeline"
    importers = {
        str(path.relative_to(package)): sorted(
            name for name in direct_imports(path, package) if name.startswith("stages.")
        )
        for path in package.rglob("*.py")
        if path.name != "__main__.py"
    }
    assert {path: found for path, found in importers.items() if found} == {}


def test_the_stages_folder_holds_exactly_the_stages_the_dvc_files_run():
    from pipeline.__main__ import STAGES

    run = {module for module, _ in pipeline_stages().values()}
    folder = {p.stem for p in (REPO / "pipeline" / "stages").glob("*.py")} - {"__init__"}
    assert folder == run == set(STAGES)


def test_subpackage_inits_hold_only_a_docstring():
    """So importing a subpackage runs no code, and dvc.yaml's deps need not name them."""
    for init in (REPO / "pipeline").glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0].value, ast.Constant), init  # type: ignore[attr-defined]
        assert len(init.read_text().splitlines()) == 1, f"{init}: one line says what lives there"


# Which stage writes each path of pipeline/paths.py; None for a folder that only holds others.
WRITTEN_BY = {
    "RAW_DIR": "download",
    "CHECKSUMS_FILE": "download",
    "STATS_FILE": "stats",
    "SPLIT_DIR": "split",
    "TRAIN_INDEX_FILE": "split",
    "VALID_INDEX_FILE": "split",
    "SPLIT_SUMMARY_FILE": "split",
    "MODELS_DIR": None,
    "MODEL_FILE": "train",
    "LAST_CHECKPOINT_FILE": None,  # resume state, deliberately not an out (dvc.yaml, train stage)
    "UPSTREAM_FILE": None,  # written by `python -m pipeline upstream` (no stage), a dep of download
    "LABELLED_DIR": None,  # written by `python -m pipeline labelled add` (no stage); DVC-tracked
    "LABELLED_MANIFEST": None,  # ...with it; a dep of the stages that read the labelled batches
    "MLFLOW_RUN_FILE": "train",
    "REPORTS_DIR": None,
    "DATA_VALIDATION_FILE": "validate",
    "DATA_DOCS_DIR": "validate",
    "TRAIN_HISTORY_FILE": "train",
    "GRAD_NORMS_FILE": "train",
    "METRICS_FILE": "evaluate",
    "PER_CLASS_FILE": "evaluate",
    "PREDICTIONS_FILE": "evaluate",
    "OOD_REFERENCE_FILE": "train",
    "MONITOR_REFERENCE_FILE": "train",
    "MONITORING_FILE": None,  # written by `python -m pipeline monitor` (no stage)
    "MONITORING_HTML_FILE": None,
    "FIGURES_DIR": "report",
    "REPORT_HTML_FILE": "report",
    "REPORT_MD_FILE": "report",
    "PROMOTION_FILE": "promote",
    "COMMITTEE_DIR": None,  # committee/dvc.yaml's outs: test_committee_outputs_are_declared
}


def declared_outputs(stage: dict) -> list[PurePosixPath]:
    """outs, metrics and plots: each entry is a path or a one-key mapping of path to options."""
    entries = [e for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])]
    return [PurePosixPath(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


def test_every_path_a_stage_writes_is_declared_in_its_outs():
    from pipeline import paths

    constants = {name for name, value in vars(paths).items() if isinstance(value, Path)}
    assert constants == set(WRITTEN_BY), "classify each new path of pipeline/paths.py in WRITTEN_BY"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    undeclared = []
    for name, stage in WRITTEN_BY.items():
        if stage is None:
            continue
        path = PurePosixPath(getattr(paths, name).as_posix())
        outputs = declared_outputs(stages[stage])
        if not any(path == out or out in path.parents for out in outputs):
            undeclared.append(
                f"{name} ({path}) is not among stage {stage!r}'s outs {[str(o) for o in outputs]}"
            )
    assert undeclared == []


def test_committee_outputs_are_declared():
    """The Layout files train --member, committee and the --committee evaluate, report and
    promote write are outs of the stage that runs them in committee/dvc.yaml (last.pt, the resume
    state, excepted)."""
    from pipeline.paths import COMMITTEE, member_layout

    stages = yaml.safe_load((REPO / "committee/dvc.yaml").read_text())["stages"]
    member = member_layout(123)  # stands for ${item}
    written = {
        "member": [member.model, member.run, member.history, member.grad_norms],
        "committee": [COMMITTEE.model, COMMITTEE.run, COMMITTEE.ood_reference],
        "evaluate": [COMMITTEE.metrics, COMMITTEE.per_class, COMMITTEE.predictions],
        "report": [COMMITTEE.figures, COMMITTEE.report_html, COMMITTEE.report_md],
        "promote": [COMMITTEE.promotion],
    }
    for stage, files in written.items():
        outputs = {
            str(out).replace("${item}", "123")
            for out in declared_outputs(stages[stage].get("do", stages[stage]))
        }
        assert {f.as_posix() for f in files} <= outputs, stage


def test_report_params_are_the_sections_it_prints():
    from pipeline.stages.report import COMMITTEE_PARAM_SECTIONS, PARAM_SECTIONS

    for dvc_file, sections in (
        ("dvc.yaml", PARAM_SECTIONS),
        ("committee/dvc.yaml", COMMITTEE_PARAM_SECTIONS),
    ):
        report = yaml.safe_load((REPO / dvc_file).read_text())["stages"]["report"]
        assert sorted(report["params"]) == sorted(sections), dvc_file


def test_import_scanner_sees_every_form(tmp_path):
    package = tmp_path / "pipeline"
    (package / "sub").mkdir(parents=True)
    for name in ("a", "b", "c", "f", "g", "unused", "sub/d", "sub/e"):
        (package / f"{name}.py").write_text("")
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "sub" / "__init__.py").write_text('"""Sub."""\n')
    (package / "stage.py").write_text(
        "import os\nimport pipeline.a\nfrom pipeline import b, VERSION\n"
        "from pipeline.c import thing\n"
        "from pipeline.sub import d\nfrom pipeline.sub.e import other\n"
        "def lazy():\n    import pipeline.f as f\n"
    )
    (package / "a.py").write_text(
        "from pipeline.g import x\nfrom pipeline.stage import y  # a cycle\n"
    )
    found = direct_imports(package / "stage.py", package)
    assert found == {"a", "b", "c", "sub.d", "sub.e", "f"}
    assert closure("stage", package) == {"stage", "a", "b", "c", "sub.d", "sub.e", "f", "g"}
    (package / "b.py").write_text("import pipeline.missing\n")
    with pytest.raises(AssertionError, match="pipeline.missing is imported but"):
        closure("stage", package)


def test_members_depend_on_every_train_param_but_the_seed_they_replace():
    member = yaml.safe_load((REPO / "committee/dvc.yaml").read_text())["stages"]["member"]["do"]
    train_keys = set(yaml.safe_load((REPO / "params.yaml").read_text())["train"]) - {"seed"}
    listed = {p.removeprefix("train.") for p in member["params"] if str(p).startswith("train")}
    assert listed == train_keys
