"""reports/monitoring.html: the verdict, and per judged model the four pictures a person checks
before trusting it: which digits are asked for, how sure the model is, how many inputs it flags,
and where the feature test's statistic falls in its permutation distribution."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipeline.quality.plotting import png_bytes
from pipeline.serving import drift

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}.drift{color:#b00;font-weight:bold}"
    "img{max-width:100%}"
)
REFERENCE_COLOR, WINDOW_COLOR = "#7f7f7f", "#d62728"


def figure(window: drift.Window, reference: drift.Reference, judgement: drift.Judgement) -> Figure:
    """Reference (grey) against window (red), one panel per test."""
    fig = Figure(figsize=(13, 3.2))
    priors, confidence, ood, features = fig.subplots(1, 4)
    p = {r.name: r.adjusted_p for r in judgement.results}
    digits = np.arange(10)
    priors.bar(digits - 0.2, judgement.shift.reference_priors, 0.4, color=REFERENCE_COLOR)
    priors.bar(digits + 0.2, judgement.shift.window_priors, 0.4, color=WINDOW_COLOR)
    priors.set(xticks=digits, xlabel="predicted digit", ylabel="share")
    priors.set_title(f"Class priors (Holm p = {p['class_priors']:.2g})", fontsize=10)
    priors.legend(["validation reference", "window"], fontsize=8)
    # -log10(1 - p) spreads the confidences that crowd near 1: 2 = 0.99, 4 = 0.9999
    for values, color in (
        (reference.confidences, REFERENCE_COLOR),
        (window.confidences, WINDOW_COLOR),
    ):
        sureness = np.sort(-np.log10(np.clip(1 - values.astype(np.float64), 1e-6, 1)))
        confidence.step(sureness, np.arange(1, len(sureness) + 1) / len(sureness), color=color)
    confidence.set(xlabel="-log10(1 - top probability)", ylabel="cumulative share")
    confidence.set_title(f"Confidence (Holm p = {p['confidence']:.2g})", fontsize=10)
    rates = [judgement.shift.design_ood_rate, judgement.shift.ood_rate]
    ood.bar([0, 1], rates, color=[REFERENCE_COLOR, WINDOW_COLOR])
    ood.set(xticks=[0, 1], xticklabels=["design", "window"], ylabel="share flagged")
    ood.set_title(f"Off-distribution rate (Holm p = {p['ood_rate']:.2g})", fontsize=10)
    features.hist(judgement.null, bins=30, color=REFERENCE_COLOR)
    features.axvline(judgement.shift.mmd2, color=WINDOW_COLOR, linewidth=2)
    features.set(xlabel="MMD² (red: the window; grey: permutations)", ylabel="permutations")
    features.set_title(f"Feature vectors (Holm p = {p['features']:.2g})", fontsize=10)
    fig.tight_layout()
    return fig


def render(report: dict[str, Any], details: list) -> str:
    def e(text: Any) -> str:
        return html.escape(str(text), quote=False)

    verdict_class = ' class="drift"' if report["verdict"] == "drift" else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Monitoring</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>What the champion is asked</h1>",
        f"<p{verdict_class}>Verdict: {e(report['verdict'])}. {e(report['reason'])}</p>",
        f"<p>Window: {e(report['window'])}, {report['records']} records; alpha "
        f"{report['alpha']} over all tests (Holm). Made {e(report['made'])}.</p>",
    ]
    if report["models"]:
        parts.append("<table><tr><th>model</th><th>records</th><th>verdict</th>")
        parts.append("".join(f"<th>{e(name)} (adjusted p)</th>" for name in drift.TESTS) + "</tr>")
        for model in report["models"]:
            if not model["judged"]:
                cells = f"<td>not judged</td>{'<td></td>' * len(drift.TESTS)}"
            else:
                tests = {t["name"]: t for t in model["tests"]}
                cells = f"<td>{'drift' if model['drift'] else 'no drift'}</td>" + "".join(
                    f"<td{' class=drift' if tests[n]['drift'] else ''}>"
                    f"{tests[n]['adjusted_p']:.3g}</td>"
                    for n in drift.TESTS
                )
            parts.append(f"<tr><td>{e(model['model'])}</td><td>{model['records']}</td>{cells}</tr>")
        parts.append("</table>")
    for model, window, reference, judgement in details:
        data = base64.b64encode(png_bytes(figure(window, reference, judgement))).decode("ascii")
        parts.append(
            f"<h2>{e(model)}</h2><img alt='reference against window for {e(model)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
