"""The README stays an entry page; the docs stay built, linked and in step with the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SNIPPET = re.compile(r'^--8<-- "README\.md:(\w+)"$', re.MULTILINE)


gen_params_doc = load_script("gen_params_doc")
gen_architecture = load_script("gen_architecture")
gen_cli_doc = load_script("gen_cli_doc")
gen_files_doc = load_script("gen_files_doc")
gen_rest_doc = load_script("gen_rest_doc")
gen_mlflow_doc = load_script("gen_mlflow_doc")


def test_readme_is_an_entry_page_of_at_most_12_kib() -> None:
    assert len(README.read_bytes()) <= 12288, "move details from README.md into a page under docs/"


def test_readme_links_resolve_and_reach_every_docs_page() -> None:
    links = {target for target in LINK.findall(README.read_text()) if "://" not in target}
    missing = sorted(target for target in links if not (ROOT / target).exists())
    assert missing == [], f"README.md links to files that do not exist: {missing}"
    unlinked = sorted(
        p.relative_to(ROOT).as_posix()
        for p in DOCS.glob("*.md")
        if p.relative_to(ROOT).as_posix() not in links
    )
    assert unlinked == [], f"README.md's Documentation table lacks {unlinked}"


def nav_pages(entries: list) -> list[str]:
    """The pages of mkdocs.yml's nav, its sections (a title over a list of entries) opened."""
    pages: list[str] = []
    for entry in entries:
        for value in entry.values():
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_in_its_section() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert sorted(nav_pages(nav)) == sorted(p.name for p in DOCS.glob("*.md"))
    sections = [next(iter(entry)) for entry in nav[1:]]
    assert sections == ["Tutorial", "How-to guides", "Reference", "Explanation", "Results"]


def test_readme_sections_included_by_the_docs_exist() -> None:
    readme = README.read_text()
    included = {name for page in DOCS.glob("*.md") for name in SNIPPET.findall(page.read_text())}
    assert included, "docs/index.md includes no README section"
    for name in included:
        start, end = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
        assert readme.count(start) == 1 and readme.count(end) == 1, (
            f"README.md lacks the markers of section {name!r}"
        )
        assert readme.index(start) < readme.index(end)


def test_mkdocs_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    index = (site / "index.html").read_text()
    assert "pipeline/stages/download.py" in index, (
        "the README's stage table did not make it into the home page"
    )
    for page in site.glob("*.html"):
        html = page.read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert remote == [], f"{page.name} loads {remote}: the site must render offline"


def test_parameters_page_is_generated_from_params_yaml_and_config() -> None:
    params_text = (ROOT / "params.yaml").read_text()
    assert gen_params_doc.undocumented(params_text) == []
    assert gen_params_doc.PAGE.read_text() == gen_params_doc.render(params_text), (
        "docs/parameters.md is stale: run python docs/gen/gen_params_doc.py"
    )


def test_a_param_without_a_comment_or_line_or_field_is_reported() -> None:
    text = (ROOT / "params.yaml").read_text()
    uncommented = re.sub(r"(\n  lr: 0\.001) +#[^\n]*", r"\1", text)
    assert uncommented != text
    assert gen_params_doc.undocumented(uncommented) == ["train.lr: no comment in params.yaml"]
    dropped = re.sub(r"\n  amp: false[^\n]*", "", text)
    assert gen_params_doc.undocumented(dropped) == ["train.amp: not in params.yaml"]
    unknown = text.replace("\n  amp: false", "\n  amp_level: 1  # no such param\n  amp: false")
    assert gen_params_doc.undocumented(unknown) == [
        "train.amp_level: not a param of pipeline/config.py"
    ]


def test_parameters_page_shows_config_bounds() -> None:
    page = gen_params_doc.PAGE.read_text()
    assert "| `train.lr` | float | > 0, <= 10 | `0.001` |" in page
    assert "| `model.hidden` | list of int | at least 1 item(s), each > 0 |" in page
    assert "`fashion-mnist`" in page


def test_architecture_svg_is_current_and_names_every_stage_and_module() -> None:
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    svg = gen_architecture.SVG.read_text()
    assert svg == gen_architecture.render(gen_architecture.read_stages(dvc_yaml)), (
        "docs/architecture.svg is stale: run python docs/gen/gen_architecture.py"
    )
    for name, stage in dvc_yaml["stages"].items():
        assert f">{name}</text>" in svg
        for dep in stage["deps"]:
            if dep.startswith("pipeline/"):
                assert f">{dep.removeprefix('pipeline/')}</text>" in svg


def test_architecture_reads_artifacts_inside_an_out_as_that_out() -> None:
    stages = gen_architecture.read_stages(
        {
            "stages": {
                "make": {
                    "deps": ["pipeline/make.py", "pipeline/shared.py"],
                    "outs": ["data/split"],
                    "metrics": [{"reports/m.json": {"cache": False}}],
                },
                "use": {
                    "deps": ["pipeline/use.py", "data/split/valid.npy", "reports/m.json"],
                    "outs": ["out.txt"],
                },
            }
        }
    )
    assert stages[0].writes == ("data/split", "reports/m.json")
    assert stages[0].imports == ("pipeline/make.py", "pipeline/shared.py")
    assert stages[1].reads == ("data/split", "reports/m.json")


def test_ci_builds_the_docs() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "mkdocs build --strict" in ci
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("mkdocs build --strict" in run.splitlines() for run in runs)


def test_cli_page_is_generated_from_the_parser() -> None:
    assert gen_cli_doc.PAGE.read_text() == gen_cli_doc.render(), (
        "docs/cli.md is stale: run python docs/gen/gen_cli_doc.py"
    )
    assert (
        "## monitor" in gen_cli_doc.PAGE.read_text() and "`--last`" in gen_cli_doc.PAGE.read_text()
    )


def test_files_page_is_generated_from_paths_artifacts_and_dvc_yaml() -> None:
    assert gen_files_doc.PAGE.read_text() == gen_files_doc.render(), (
        "docs/files.md is stale: run python docs/gen/gen_files_doc.py"
    )
    assert "| `reports/metrics.json` | evaluate | report, promote |" in gen_files_doc.render()


def test_mlflow_names_page_is_generated_and_its_check_finds_an_undocumented_name(
    migrated_mlflow_db: Path, tmp_path: Path
) -> None:
    import shutil

    import mlflow

    assert gen_mlflow_doc.PAGE.read_text() == gen_mlflow_doc.render(), (
        "docs/mlflow.md is stale: run python docs/gen/gen_mlflow_doc.py"
    )
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("mnist-mlp", (tmp_path / "mlruns").as_uri())
    run = client.create_run(experiment).info.run_id
    client.log_param(run, "train.lr", "0.001")
    for name in ("lr", "grad_norm/hidden.0", "robust_shift_1px_n_accuracy", "made_up"):
        client.log_metric(run, name, 1.0)
    client.set_tag(run, "environment.torch", "2.14.1")
    client.create_registered_model("mnist-mlp")
    assert gen_mlflow_doc.undocumented(store) == ["Training runs: metrics: made_up"]


def test_python_api_page_renders_every_module_of_the_package() -> None:
    """docs/api.md names each ground module and subpackage (subpackages with their submodules),
    so a new module reaches the Python API reference without a hand-written entry."""
    package = ROOT / "pipeline"
    expected = {f"pipeline.{p.stem}" for p in package.glob("*.py") if p.stem[0] != "_"}
    expected |= {f"pipeline.{p.parent.name}" for p in package.glob("*/__init__.py")}
    rendered = set(re.findall(r"^::: (\S+)$", (DOCS / "api.md").read_text(), re.M))
    assert rendered == expected


HISTORY_PAGES = {"results.md", "benchmarks.md"}  # figures and history live only there
COMMIT_OR_DATE = re.compile(r"\bcommits? [0-9a-f]{7,40}\b|\b20\d\d-\d\d-\d\d\b")


def prose(markdown: str) -> str:
    """The text a reader reads as narrative: fenced blocks and inline code (examples of output,
    commands, file names) left out."""
    without_blocks = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", without_blocks)


def test_no_page_outside_results_names_a_commit_or_a_date() -> None:
    found = {
        page.name: COMMIT_OR_DATE.findall(prose(page.read_text()))
        for page in DOCS.glob("*.md")
        if page.name not in HISTORY_PAGES
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_rest_page_is_generated_from_the_service() -> None:
    from pipeline.serving.service import Answer

    assert set(gen_rest_doc.MEANINGS) == set(Answer.model_fields), "say what each field means"
    assert gen_rest_doc.PAGE.read_text() == gen_rest_doc.render(), (
        "docs/rest.md is stale: run python docs/gen/gen_rest_doc.py"
    )


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|") and not line.startswith("| ---")
    ][1:]


def test_readme_headline_results_come_from_results_page() -> None:
    """Each row of the README's table names the accuracy of the same configuration on the Results
    page, the only place with measured figures and their history; the defaults row is also the
    committed reports/metrics.json."""
    readme = README.read_text()
    headline = readme[readme.index("[start:results]") : readme.index("[end:results]")]
    results = {
        row[0].replace("*", "").split(":")[0]: row[1]
        for row in table_rows((DOCS / "results.md").read_text())
    }
    percent = re.compile(r"\d+\.\d+%")
    for row in table_rows(headline):
        name = row[0].replace("*", "").split(":")[0]
        assert name in results, f"README row {name!r} is not on the Results page"
        assert percent.findall(row[1])[:1] == percent.findall(results[name])[:1], name
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
    defaults = next(row for row in table_rows(headline) if row[0].startswith("Defaults"))
    assert defaults[1].startswith(f"{metrics['test_accuracy']:.2%}")
