"""Draw docs/architecture.svg from dvc.yaml: stages, the artifacts they write and read, modules.

    python docs/gen/gen_architecture.py           # rewrite the SVG
    python docs/gen/gen_architecture.py --check   # exit 1 if the committed SVG is stale

Plain SVG written by hand (no graphviz, no fonts or scripts to fetch), byte-identical for the same
dvc.yaml, so it renders offline and tests/test_docs.py can insist that it is current. The facts all
come from dvc.yaml, whose deps tests/test_dvc_yaml.py ties to each stage's real imports.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import yaml
from page import write_or_check

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = REPO / "dvc.yaml"
SVG = REPO / "docs" / "architecture.svg"

ROW, COL, CHAR = 30, 24, 7.3  # row height, column width, width of one 12px monospace character
LABEL_W = 110  # stage name column
GAP = 30  # between the blocks
FONTS = "DejaVu Sans Mono, Menlo, Consolas, monospace"
INK, MUTED, DATA, OWN, PAPER = "#1f2933", "#9aa5b1", "#0b7285", "#c2255c", "#ffffff"


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # pipeline/stages/<name>.py, the stage's own module
    imports: tuple[str, ...]  # every pipeline module in deps
    reads: tuple[str, ...]  # artifacts (another stage's outs) in deps
    writes: tuple[str, ...]  # outs, metrics and plots


def _paths(entries: list[Any] | None) -> list[str]:
    """dvc.yaml lists paths either bare or as {path: options}."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def read_stages(dvc_yaml: dict[str, Any]) -> list[Stage]:
    raw = dvc_yaml["stages"]
    written = [
        p
        for spec in raw.values()
        for key in ("outs", "metrics", "plots")
        for p in _paths(spec.get(key))
    ]

    def artifact(dep: str) -> str:
        """The out that holds `dep` (data/split/valid.npy is in data/split), else dep itself."""
        return next((out for out in written if dep == out or dep.startswith(out + "/")), dep)

    stages = []
    for name, spec in raw.items():
        deps = _paths(spec.get("deps"))
        modules = tuple(d for d in deps if d.startswith("pipeline/") and d.endswith(".py"))
        reads = tuple(dict.fromkeys(artifact(d) for d in deps if d not in modules))
        writes = tuple(p for key in ("outs", "metrics", "plots") for p in _paths(spec.get(key)))
        stages.append(Stage(name, f"pipeline/stages/{name}.py", modules, reads, writes))
    return stages


def _text(
    x: float,
    y: float,
    label: str,
    *,
    size: int = 12,
    color: str = INK,
    anchor: str = "start",
    rotate: bool = False,
    weight: str = "normal",
) -> str:
    where = (
        f'transform="translate({x:.1f},{y:.1f}) rotate(-90)"'
        if rotate
        else f'x="{x:.1f}" y="{y:.1f}"'
    )
    return (
        f'<text {where} font-size="{size}" fill="{color}" text-anchor="{anchor}" '
        f'font-weight="{weight}">{escape(label)}</text>'
    )


def _circle(x: float, y: float, r: int, fill: str, ring: bool = False) -> str:
    stroke = f' stroke="{DATA}" stroke-width="2"' if ring else ""
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}"{stroke}/>'


def _square(x: float, y: float, size: float, fill: str) -> str:
    """A square centred on (x, y)."""
    corner = f'x="{x - size / 2:.1f}" y="{y - size / 2:.1f}"'
    return f'<rect {corner} width="{size}" height="{size}" fill="{fill}"/>'


def render(stages: list[Stage]) -> str:
    artifacts = list(dict.fromkeys(p for s in stages for p in s.writes))
    own = [s.module for s in stages]
    shared = sorted({m for s in stages for m in s.imports} - set(own))
    modules = own + shared
    longest = max(len(label) for label in artifacts + modules)
    top = 60 + longest * CHAR  # title, block headings, then vertical column labels
    x_art = LABEL_W + 10
    x_mod = x_art + len(artifacts) * COL + GAP
    width = x_mod + len(modules) * COL + 20
    height = top + len(stages) * ROW + 70

    def cx(block_x: float, i: int) -> float:
        return block_x + i * COL + COL / 2

    def cy(row: int) -> float:
        return top + row * ROW + ROW / 2

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{FONTS}">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="{PAPER}"/>',
        _text(
            10,
            22,
            "Stages (dvc.yaml, in order) -> artifacts they write and read -> modules they import",
            size=14,
            weight="bold",
        ),
        _text(x_art, 46, "artifacts", weight="bold"),
        _text(x_mod, 46, "pipeline modules", weight="bold"),
    ]
    for i, label in enumerate(artifacts):
        out.append(_text(cx(x_art, i) + 4, top - 6, label, rotate=True))
    for i, label in enumerate(modules):
        out.append(
            _text(
                cx(x_mod, i) + 4,
                top - 6,
                label.removeprefix("pipeline/"),
                rotate=True,
                color=OWN if label in own else INK,
            )
        )
    for row, stage in enumerate(stages):
        y = cy(row)
        if row % 2 == 0:
            band = f'y="{y - ROW / 2:.1f}" width="{width:.0f}" height="{ROW}"'
            out.append(f'<rect x="0" {band} fill="#f3f5f7"/>')
        out.append(_text(10, y + 4, stage.name, weight="bold"))
    for i, path in enumerate(artifacts):
        rows = [r for r, s in enumerate(stages) if path in s.writes or path in s.reads]
        x = cx(x_art, i)
        out.append(
            f'<line x1="{x:.1f}" y1="{cy(rows[0]):.1f}" x2="{x:.1f}" y2="{cy(rows[-1]):.1f}" '
            f'stroke="{MUTED}" stroke-width="2"/>'
        )
        for r in rows:
            out.append(_circle(x, cy(r), 6, DATA if path in stages[r].writes else PAPER, ring=True))
    for i, module in enumerate(modules):
        x = cx(x_mod, i)
        for r, stage in enumerate(stages):
            if module == stage.module:
                out.append(_square(x, cy(r), 12, OWN))
            elif module in stage.imports:
                out.append(_circle(x, cy(r), 4, INK))
    legend_y = top + len(stages) * ROW + 30
    out += [
        _circle(16, legend_y - 4, 6, DATA, ring=True),
        _text(28, legend_y, "writes (outs, metrics, plots)"),
        _circle(276, legend_y - 4, 6, PAPER, ring=True),
        _text(288, legend_y, "reads (deps); the line joins writer and readers"),
        _square(16, legend_y + 20, 12, OWN),
        _text(28, legend_y + 24, "the stage's own module (main(params))"),
        _circle(326, legend_y + 20, 4, INK),
        _text(338, legend_y + 24, "imports a shared module (a dep in dvc.yaml)"),
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/architecture.svg is not current"
    )
    args = parser.parse_args(argv)
    svg = render(read_stages(yaml.safe_load(DVC_YAML.read_text())))
    return write_or_check(SVG, svg, args.check, __file__)


if __name__ == "__main__":
    sys.exit(main())
