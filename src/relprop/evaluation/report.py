"""Markdown table and self-contained HTML report of ``results.json``.

The HTML report holds the configuration, the results table, per-class bars (data sets with at
most 80 classes), sensitivity curves and example heat-maps of the best and worst units; its
pictures are embedded as PNG data, so the file can be moved on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

MAX_BAR_CLASSES = 80


def _columns(results: dict) -> list[tuple[str, str, str, str]]:
    """(header, metric key, field, format) for the metrics present in the results."""
    config = results["config"]
    metrics, has_flags = config["metrics"], config["data"]["difficult_flags"] is not None
    methods = [k for k in results if k != "config"]
    present = {key for m in methods for key in results[m]}
    columns = []
    if "pointing" in metrics:
        columns.append(("Pointing All (%)", "pointing", "all", "pct"))
        if has_flags:
            columns.append(("Pointing Difficult (%)", "pointing", "difficult", "pct"))
        if "pointing_unsmoothed" in present:
            columns.append(("Pointing All, s=0 (%)", "pointing_unsmoothed", "all", "pct"))
            if has_flags:
                columns.append(("Pointing Difficult, s=0 (%)", "pointing_unsmoothed", "difficult", "pct"))
    if "energy" in metrics:
        columns.append(("Energy pointing (%)", "energy", "all", "pct"))
    if "miou" in metrics:
        thresholds = config["miou"]["thresholds"]
        columns.append((f"mIoU, {thresholds[0]} (%)", "miou", "all", "pct"))
        columns += [(f"mIoU, {t} (%)", f"miou@{t}", "all", "pct") for t in thresholds[1:]]
        columns += [("Pixel acc. (%)", "miou", "pixel_accuracy", "pct"), ("mAP (%)", "miou", "map", "pct")]
    if "insdel" in metrics:
        columns += [("Insertion AUC ↑", "insertion", "all", "frac"), ("Deletion AUC ↓", "deletion", "all", "frac")]
    if "sensitivity" in metrics:
        for mode in config["sensitivity"]["modes"]:
            measure = config["sensitivity"]["measures"][0]
            columns.append((f"Sensitivity {mode}, {measure} ↓", f"sensitivity_{mode}", "all", "frac"))
    return columns


def _cell(value: object, style: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if style == "pct" else f"{value:.3f}"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per method of the summary table."""
    columns = _columns(results)
    header = ["Method"] + [c[0] for c in columns]
    rows = []
    for method in (k for k in results if k != "config"):
        entry = results[method]
        rows.append([method] + [_cell(entry.get(key, {}).get(field), style) for _, key, field, style in columns])
    return header, rows


def model_label(config: dict) -> str:
    """The model's name for titles, with "(random weights)" when it was not trained."""
    return f"{config['model']} (random weights)" if config.get("random_weights") else str(config["model"])


def notes(results: dict, skipped: Sequence[dict], invalid: Sequence[str] = ()) -> list[str]:
    """Facts a reader must know: random weights, difficult flags, unreadable files, invalid boxes, constant
    maps, undefined values."""
    config = results["config"]
    lines = []
    if config.get("random_weights"):
        lines.append(f"The model {config['model']} has random weights (no --weights given): the maps explain noise.")
    flags = config["data"]["difficult_flags"]
    if config["data"]["name"] == "imagenet":
        lines.append("ImageNet has no difficult subset.")
    elif flags is None:
        lines.append(
            "No difficult-flag file was found: the Difficult numbers are not computed (pass --difficult-flags)."
        )
    else:
        lines.append(
            f"Difficult subset: EBP flags read from {flags} (TorchRay, CC BY-NC 4.0; not shipped with relprop)."
        )
    if skipped:
        lines.append(
            f"{len(skipped)} image(s) skipped as unreadable: "
            + "; ".join(f"{s['path']} ({s['error']})" for s in skipped)
        )
    if invalid:
        lines.append(f"{len(invalid)} (image, class) pair(s) with invalid boxes not scored: " + "; ".join(invalid))
    for method in (k for k in results if k != "config"):
        entry = results[method]
        constant = entry.get("pointing", {}).get("constant_maps")
        if constant:
            lines.append(f"{method}: {constant} constant map(s) in the pointing game (they point at (0, 0)).")
        undefined = entry.get("energy", {}).get("undefined")
        if undefined:
            lines.append(f"{method}: energy undefined for {undefined} unit(s) (no positive relevance).")
    return lines


def markdown(
    results: dict, skipped: Sequence[dict] = (), command: str | None = None, invalid: Sequence[str] = ()
) -> str:
    """The summary table as Markdown, with the command and notes."""
    header, rows = table_rows(results)
    data, model = results["config"]["data"], model_label(results["config"])
    text = [f"Data: {data['name']} ({data['evaluated']} images evaluated), model: {model}.", ""]
    if command:
        text += ["```", command, "```", ""]
    text += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text += ["| " + " | ".join(row) + " |" for row in rows]
    text += [""] + [f"- {line}" for line in notes(results, skipped, invalid)]
    return "\n".join(text) + "\n"


# ---------------------------------------------------------------------------------------- figures


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_bars(results: dict, key: str) -> bytes | None:
    """Grouped bars (classes × methods) of ``results[method][key]['per_class']`` as PNG bytes."""
    methods = [m for m in results if m != "config" and results[m].get(key, {}).get("per_class")]
    classes = sorted({c for m in methods for c in results[m][key]["per_class"]})
    if not methods or not classes or len(classes) > MAX_BAR_CLASSES:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(classes) * max(1, len(methods)) / 2), 3.2))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [results[method][key]["per_class"].get(c) for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, [np.nan if v is None else v for v in values], width, label=method)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=70, fontsize=7)
    ax.set_ylabel(f"{key} per class")
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    return _png(fig)


def sensitivity_plot(curves: Mapping[str, dict], title: str) -> bytes:
    """Similarity-vs-randomised-step curves (mean ± std over units), one line per measure, as PNG bytes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 3.6), squeeze=False)
    for ax, (mode, summary) in zip(axes[0], curves.items()):
        steps = summary["steps"]
        for measure, values in summary["curves"].items():
            mean = np.array([np.nan if v is None else v for v in values["mean"]])
            std = np.array([np.nan if v is None else v for v in values["std"]])
            ax.plot(range(len(steps)), mean, marker="o", markersize=3, label=measure)
            ax.fill_between(range(len(steps)), mean - std, mean + std, alpha=0.15)
        ax.set_xticks(range(len(steps)), steps, rotation=80, fontsize=6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("similarity to the trained model's map")
        ax.set_title(f"{title}: {mode} randomisation", fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------- HTML

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}
img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto}"""


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(
    results: dict,
    skipped: Sequence[dict] = (),
    examples: Mapping[str, bytes] | None = None,
    command: str | None = None,
    invalid: Sequence[str] = (),
) -> str:
    """The full report as one HTML page; ``examples``: method -> PNG of its best/worst units."""
    config = results["config"]
    header, rows = table_rows(results)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>relprop evaluation</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>relprop evaluation: {html.escape(config['data']['name'])}, {html.escape(model_label(config))}</h1>",
    ]
    if command:
        parts.append(f"<pre>{html.escape(command)}</pre>")
    parts += ["<h2>Results</h2>", _table_html(header, rows), "<ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in notes(results, skipped, invalid)]
    parts.append("</ul>")
    bar_keys = [k for k in ("pointing", "energy", "miou", "insertion", "deletion") if k in _present(results)]
    bars = [(k, per_class_bars(results, k)) for k in bar_keys]
    if any(png for _, png in bars):
        parts.append("<h2>Per class</h2>")
        parts += [f"<h3>{k}</h3>{_img(png)}" for k, png in bars if png]
    elif bar_keys:
        parts.append(
            f"<p>Per-class bars are drawn for data sets with at most {MAX_BAR_CLASSES} classes; "
            "per-class values are in results.json.</p>"
        )
    for method in (m for m in results if m != "config"):
        curves = {k.removeprefix("sensitivity_"): v for k, v in results[method].items() if k.startswith("sensitivity_")}
        if curves:
            parts.append(f"<h2>Model sensitivity: {html.escape(method)}</h2>")
            parts.append(_img(sensitivity_plot(curves, method)))
    if examples:
        parts.append("<h2>Examples: best and worst units</h2>")
        for method, png in examples.items():
            parts.append(f"<h3>{html.escape(method)}</h3>{_img(png)}")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>")
    return "\n".join(parts)


def _present(results: dict) -> set[str]:
    return {key for m in results if m != "config" for key in results[m]}


def example_figure(rows: Sequence[tuple[np.ndarray, np.ndarray, str]]) -> bytes:
    """One panel per unit: the (h, w, 3) input image with its signed (h, w) map overlaid, as PNG bytes."""
    from ..viz import show_heatmap

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.9), squeeze=False)
    for ax, (image, saliency, title) in zip(axes[0], rows):
        show_heatmap(ax, saliency, image)
        ax.set_title(title, fontsize=7)
    return _png(fig)


def write_report(
    out: Path,
    results: dict,
    skipped: Sequence[dict] = (),
    examples: Mapping[str, bytes] | None = None,
    command: str | None = None,
    invalid: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``report.html`` into ``out``; returns their paths. ``invalid``: the
    (image, class) pairs whose boxes could not be scored, each with its file and row."""
    md, page = out / "results.md", out / "report.html"
    md.write_text(markdown(results, skipped, command, invalid))
    page.write_text(html_report(results, skipped, examples, command, invalid))
    return md, page
