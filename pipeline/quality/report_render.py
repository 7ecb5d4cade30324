"""The report's two renderings: Markdown that links the PNGs, and one self-contained HTML page.

The HTML embeds every figure as a base64 data URI and carries its CSS inline, so the one file
opens offline and can be mailed around. Kept apart from the report stage's data and figures.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from pipeline.paths import FIGURES_DIR


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Section:
    heading: str
    text: list[str]
    table: Table | None = None


@dataclass(frozen=True)
class FigureDoc:
    name: str  # file name under reports/figures/
    title: str
    guidance: str  # one sentence on how to read it


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(sections: list[Section], docs: list[FigureDoc]) -> str:
    lines = ["# MNIST MLP report", ""]
    for section in sections:
        lines += [f"## {section.heading}", "", *[f"{t}  " for t in section.text], ""]
        if section.table:
            lines.append("| " + " | ".join(section.table.header) + " |")
            lines.append("|" + " --- |" * len(section.table.header))
            lines += [
                "| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.table.rows
            ]
            lines.append("")
    lines += ["## Figures", ""]
    for doc in docs:
        lines += [
            f"### {doc.title}",
            "",
            doc.guidance,
            "",
            f"![{doc.title}]({FIGURES_DIR.name}/{doc.name})",
            "",
        ]
    return "\n".join(lines)


# One line stays over 100 columns: rewrapping it would change report.html's bytes, a DVC output.
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f4f4f4; }
td { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; margin-bottom: .5em; }
"""  # noqa: E501


def render_html(sections: list[Section], docs: list[FigureDoc], pngs: dict[str, bytes]) -> str:
    def e(text: str) -> str:
        return html.escape(text, quote=False)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>MNIST MLP report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>MNIST MLP report</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{e(section.heading)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in section.text]
        if section.table:
            parts.append(
                "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in section.table.header) + "</tr>"
            )
            parts += [
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                for row in section.table.rows
            ]
            parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for doc in docs:
        data = base64.b64encode(pngs[doc.name]).decode("ascii")
        parts.append(
            f"<figure><h3>{e(doc.title)}</h3><figcaption>{e(doc.guidance)}</figcaption>"
            f'<img alt="{html.escape(doc.title)}" src="data:image/png;base64,{data}"></figure>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
