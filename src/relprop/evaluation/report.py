"""Markdown table and self-contained HTML report of ``results.json``.

The HTML report holds the configuration, the results table, the per-class values (bars for data
sets with at most 80 classes, tables of the best and worst classes for more), sensitivity curves
and example heat-maps of the best and worst units; its pictures are embedded as PNG data, so the
file can be moved on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MAX_BAR_CLASSES = 80  # more classes (ImageNet) get tables of the best and worst classes instead of bars
TOP_CLASSES = 10


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
    if "grid_pointing" in metrics:
        columns += [("Grid pointing ↑", "grid_pointing", "all", "frac"), ("Grid median", "grid_pointing", "median", "frac")]
    if "target_sensitivity" in metrics:
        for name, what in (("random", "random class"), ("second", "2nd choice")):
            columns += [
                (f"Target sens. {what}, SSIM ↓", f"target_sensitivity_{name}", "ssim", "frac"),
                (f"Target sens. {what}, Spearman ↓", f"target_sensitivity_{name}", "spearman", "frac"),
            ]
    return columns


def _cell(value: object, style: str, missing: str = "–") -> str:
    if value is None:
        return missing
    return f"{value:.1f}" if style == "pct" else f"{value:.3f}"


def _field(values: dict, field: str) -> object:
    """``values[field]``, or its mean where it is a per-measure summary (target sensitivity)."""
    value = values.get(field)
    return value.get("mean") if isinstance(value, dict) else value


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per method of the summary table."""
    columns = _columns(results)
    header = ["Method"] + [c[0] for c in columns]
    rows = []
    for method in (k for k in results if k != "config"):
        entry = results[method]
        rows.append([method] + [_cell(_field(entry.get(key, {}), field), style) for _, key, field, style in columns])
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
        undefined = entry.get("grid_pointing", {}).get("undefined")
        if undefined:
            lines.append(f"{method}: {undefined} grid cell map(s) without positive relevance, scored 0.")
    grid = config.get("grid_pointing")
    if grid:
        first = next((results[m]["grid_pointing"] for m in results if m != "config"), {})
        lines.append(
            f"Grid pointing game: {first.get('mosaics', 0)} mosaic(s) of 2×2 cells of {grid['cell_px']} px from a pool "
            f"of the {grid['pool']} most confident correctly classified images (seed {grid['seed']}; list in "
            "mosaics.json); score = share of the positive relevance in the explained class's cell, 0.25 = uniform."
        )
    if config.get("target_sensitivity"):
        lines.append(
            "Target sensitivity: SSIM / Spearman between the map of the ground-truth class and that of a random "
            "absent class and of the model's highest-ranked absent class; lower = more class-sensitive, 1 = identical."
        )
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


# metric key -> (what a per-class value is, full scale): percentages or fractions
PER_CLASS_METRICS = {
    "pointing": ("pointing-game accuracy (%)", 100.0),
    "energy": ("energy inside the box (%)", 100.0),
    "miou": ("foreground IoU, first threshold (%)", 100.0),
    "insertion": ("insertion AUC (higher is better)", 1.0),
    "deletion": ("deletion AUC (lower is better)", 1.0),
}


def short_class_names(names: Sequence[str], width: int = 24) -> dict[str, str]:
    """Full class name -> label for charts: its first comma-separated synonym ("tench, Tinca tinca" ->
    "tench"), cut to ``width`` characters with "…"; classes whose first synonyms agree keep their full name."""
    first = [name.split(",")[0].strip() for name in names]
    shared = {label for label in first if first.count(label) > 1}
    labels = [name if label in shared else label for name, label in zip(names, first)]
    return {name: label if len(label) <= width else label[: width - 1] + "…" for name, label in zip(names, labels)}


def per_class_values(results: dict, key: str) -> tuple[list[str], list[str], dict[str, dict[str, float | None]]]:
    """(methods, classes, values) of ``results[method][key]['per_class']``: the methods that have
    per-class values, the classes any of them scored (sorted by name), and method -> class -> value,
    None where that method has no scored unit of the class."""
    methods = [m for m in results if m != "config" and results[m].get(key, {}).get("per_class")]
    classes = sorted({c for m in methods for c in results[m][key]["per_class"]})
    values = {m: {c: results[m][key]["per_class"].get(c) for c in classes} for m in methods}
    return methods, classes, values


def per_class_bars(results: dict, key: str):  # type: ignore[no-untyped-def]
    """Figure of horizontal grouped bars (one group per class, one bar per method) of ``key``'s
    per-class values, classes by their short names; "n/a" marks a class a method has no value for.
    None when there are no per-class values or more than MAX_BAR_CLASSES classes."""
    from matplotlib.figure import Figure

    methods, classes, values = per_class_values(results, key)
    if not classes or len(classes) > MAX_BAR_CLASSES:
        return None
    label, scale = PER_CLASS_METRICS[key]
    names = short_class_names(classes)
    fig = Figure(figsize=(7.0, 0.9 + 0.13 * len(classes) * max(2, len(methods))), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(methods)
    rows = np.arange(len(classes))
    for i, method in enumerate(methods):
        where = rows + (i - (len(methods) - 1) / 2) * width
        row_values = [values[method][c] for c in classes]
        ax.barh(where, [np.nan if v is None else v for v in row_values], width, label=method)
        for y, v in zip(where, row_values):
            text = "n/a" if v is None else _cell(v, "pct" if scale == 100.0 else "frac")
            ax.text((v or 0.0) + 0.01 * scale, y, text, va="center", fontsize=5.5, color="0.3")
    ax.set_yticks(rows, [names[c] for c in classes], fontsize=7)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlim(0, 1.1 * scale)
    ax.set_xlabel(f"{label} per class", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(methods)), loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    return fig


def per_class_table(results: dict, key: str, count: int = TOP_CLASSES) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``key``'s per-class values, classes ranked by the first method's value
    (highest first, ties by name, classes it has no value for last): the ``count`` best and the
    ``count`` worst, or every class with ``count=0``; "n/a" where a method has no value."""
    methods, classes, values = per_class_values(results, key)
    first = values[methods[0]] if methods else {}
    ranked = sorted(classes, key=lambda c: (first[c] is None, -(first[c] or 0.0), c))
    if count and len(ranked) > 2 * count:
        ranked = ranked[:count] + ranked[-count:]
    style = "pct" if PER_CLASS_METRICS[key][1] == 100.0 else "frac"
    names = short_class_names(classes)
    rows = [[names[c]] + [_cell(values[m][c], style, "n/a") for m in methods] for c in ranked]
    return ["Class"] + methods, rows


def _per_class_html(results: dict, key: str) -> str:
    """The per-class part of one metric: bars for up to MAX_BAR_CLASSES classes, else tables."""
    methods, classes, _ = per_class_values(results, key)
    total = results["config"]["data"].get("classes")
    label = PER_CLASS_METRICS[key][0]
    scored = f"{len(classes)} of {total} classes have a scored unit (the others are left out)" if total else (
        f"{len(classes)} classes")
    bars = per_class_bars(results, key)
    if bars is not None:
        return f"<h3>{html.escape(label)}</h3><p>{scored}; n/a: no scored unit of that class.</p>{_img(_png(bars))}"
    header, best_and_worst = per_class_table(results, key)
    _, every = per_class_table(results, key, count=0)
    return (
        f"<h3>{html.escape(label)}</h3><p>{scored}. The {TOP_CLASSES} best and {TOP_CLASSES} worst classes of "
        f"{html.escape(methods[0])}, the other methods beside them; n/a: no scored unit of that class.</p>"
        f"{_table_html(header, best_and_worst)}<details><summary>All {len(classes)} scored classes</summary>"
        f"{_table_html(header, every)}</details>"
    )


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
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}
img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto}"""


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(
    results: dict,
    skipped: Sequence[dict] = (),
    examples: Mapping[str, ExampleFigure] | None = None,
    command: str | None = None,
    invalid: Sequence[str] = (),
) -> str:
    """The full report as one HTML page; ``examples``: method -> figure of its best/worst units."""
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
    per_class_keys = [k for k in PER_CLASS_METRICS if per_class_values(results, k)[1]]
    if per_class_keys:
        parts.append("<h2>Per class</h2><p>Every per-class value is also in results.json.</p>")
        parts += [_per_class_html(results, k) for k in per_class_keys]
    for method in (m for m in results if m != "config"):
        curves = {k.removeprefix("sensitivity_"): v for k, v in results[method].items() if k.startswith("sensitivity_")}
        if curves:
            parts.append(f"<h2>Model sensitivity: {html.escape(method)}</h2>")
            parts.append(_img(sensitivity_plot(curves, method)))
    if examples:
        parts.append("<h2>Examples: best and worst units</h2>")
        for method, figure in examples.items():
            parts.append(f"<h3>{html.escape(method)}</h3><p>{html.escape(figure.ranking)}</p>{_img(_png(figure.figure))}")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>")
    return "\n".join(parts)


@dataclass
class ExamplePanel:
    """One unit shown in the report, everything in the original image's pixel coordinates."""

    image: np.ndarray  # (h, w, 3) the image, possibly shrunk for display (same aspect ratio)
    saliency: np.ndarray  # (h, w) the method's map on the same grid as ``image``
    size: tuple[int, int]  # (W, H) of the original image
    title: str
    truth: np.ndarray | None  # (H, W) bool ground truth of the ranking metric, drawn as an outline
    point: tuple[float, float] | None  # the pointing game's arg-max (u, v), None without pointing
    tolerance: float  # the pointing game's tolerance in original pixels


@dataclass
class ExampleFigure:
    """A method's best and worst units (a matplotlib Figure) and the sentence saying how they were ranked."""

    figure: Any
    ranking: str


_TRUTH_COLOUR = "lime"


def example_figure(rows: Sequence[Sequence[ExamplePanel]]):  # type: ignore[no-untyped-def]
    """One row of panels per group (e.g. the best units, then the worst), each image at its own
    aspect ratio: the signed map over the image, the ground truth outlined, the arg-max point with
    its tolerance circle; a colour bar and a legend; a matplotlib Figure."""
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    from ..viz import add_signed_scale, overlay

    columns = max(len(row) for row in rows)
    fig = Figure(figsize=(3.0 * columns + 1.4, 2.9 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for ax_row, panels in zip(axes, rows):
        for ax in ax_row:
            ax.set_axis_off()
        for ax, panel in zip(ax_row, panels):
            width, height = panel.size
            ax.imshow(overlay(panel.saliency, panel.image), extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            if panel.truth is not None:
                step = max(1, int(np.ceil(max(width, height) / 400)))
                ys, xs = np.arange(0, height, step), np.arange(0, width, step)
                ax.contour(xs, ys, panel.truth[::step, ::step].astype(float), levels=[0.5], colors=_TRUTH_COLOUR,
                           linewidths=1.3)
            if panel.point is not None:
                ax.add_patch(Circle(panel.point, panel.tolerance, fill=False, color="black", lw=1.3,
                                    path_effects=outline))
                ax.plot(*panel.point, marker="+", color="black", markersize=10, mew=1.6, path_effects=outline)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_title(panel.title, fontsize=8)
    panels = [panel for row in rows for panel in row]
    handles = [Line2D([], [], color=_TRUTH_COLOUR, lw=1.5, label="ground truth")]
    if any(p.point is not None for p in panels):
        handles += [
            Line2D([], [], color="black", marker="+", ls="none", markersize=8, label="arg-max point"),
            Line2D([], [], color="black", marker="o", mfc="none", ls="none", markersize=8,
                   label=f"{panels[0].tolerance:g}-px tolerance circle"),
        ]
    add_signed_scale(fig, axes, handles)
    return fig


def write_report(
    out: Path,
    results: dict,
    skipped: Sequence[dict] = (),
    examples: Mapping[str, ExampleFigure] | None = None,
    command: str | None = None,
    invalid: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``report.html`` into ``out``; returns their paths. ``invalid``: the
    (image, class) pairs whose boxes could not be scored, each with its file and row."""
    md, page = out / "results.md", out / "report.html"
    md.write_text(markdown(results, skipped, command, invalid))
    page.write_text(html_report(results, skipped, examples, command, invalid))
    return md, page
