"""dvc.yaml's deps of each `python -m pipeline <stage>` stage are exactly the pipeline modules it
imports.

Found by static analysis (transitively, imports inside functions included), so that DVC reruns a
stage when, and only when, code it runs has changed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CMD = re.compile(r"python -m pipeline (\w+)")


def direct_imports(path: Path, package: Path) -> set[str]:
    """Modules of `package` that `path` imports: import pipeline.x / from pipeline import x /
    from pipeline.x import y."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[1] for a in node.names if a.name.startswith(f"{package.name}.")
            }
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                module = node.module or ""
            elif node.module == package.name or (node.module or "").startswith(f"{package.name}."):
                module = node.module.removeprefix(package.name).lstrip(".")
            else:
                continue
            if module:
                found.add(module.split(".")[0])
            else:  # from pipeline import x: x is a module, or a name defined in __init__.py
                found |= {a.name for a in node.names if (package / f"{a.name}.py").exists()}
    return found


def closure(module: str, package: Path) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = package / f"{name}.py"
        assert path.is_file(), f"{package.name}.{name} is imported but {path} does not exist"
        seen.add(name)
        todo.extend(direct_imports(path, package))
    return seen


def pipeline_stages() -> dict[str, tuple[str, list[str]]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        match = CMD.fullmatch(str(stage.get("cmd", "")).strip())
        if match:
            found[name] = (match.group(1), [str(d) for d in stage.get("deps", [])])
    return found


def test_dvc_yaml_has_pipeline_stages():
    assert "download" in pipeline_stages()


@pytest.mark.parametrize("stage", sorted(pipeline_stages()))
def test_stage_deps_are_exactly_its_imports(stage):
    module, deps = pipeline_stages()[stage]
    listed = {d for d in deps if re.fullmatch(r"pipeline/[^/]+\.py", d)}
    needed = {f"pipeline/{m}.py" for m in closure(module, REPO / "pipeline")}
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: deps missing {missing or 'nothing'}, "
        f"deps listing modules it does not import {extra or 'nothing'}"
    )


def test_import_scanner_sees_every_form(tmp_path):
    package = tmp_path / "pipeline"
    package.mkdir()
    for name in ("a", "b", "c", "d", "e", "f", "g", "unused"):
        (package / f"{name}.py").write_text("")
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "stage.py").write_text(
        "import os\nimport pipeline.a\nfrom pipeline import b, VERSION\n"
        "from pipeline.c import thing\n"
        "from . import d\nfrom .e import other\n"
        "def lazy():\n    import pipeline.f as f\n"
    )
    (package / "a.py").write_text(
        "from pipeline.g import x\nfrom pipeline.stage import y  # a cycle\n"
    )
    assert direct_imports(package / "stage.py", package) == {"a", "b", "c", "d", "e", "f"}
    assert closure("stage", package) == {"stage", "a", "b", "c", "d", "e", "f", "g"}
    (package / "b.py").write_text("import pipeline.missing\n")
    with pytest.raises(AssertionError, match="pipeline.missing is imported but"):
        closure("stage", package)
