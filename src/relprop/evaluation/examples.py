"""Example heat-maps for the report: each method's best and worst units under one ranking metric."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor

from .datasets import Sample
from .maps import to_original
from .report import ExampleFigure, ExamplePanel, example_figure, short_class_names
from .runner import Evaluator

DISPLAY_SIZE = 400  # longest side of a shown image, pixels (the original when smaller)

# (result key, ranking sentence, short name of the score); the first one a method has results for ranks it
RANKINGS = (
    ("miou", "foreground IoU at the first mIoU threshold, TP / (TP + FP + FN) of the thresholded map", "IoU"),
    ("energy", "energy-based pointing: the share of the positive relevance inside the box", "energy"),
    ("pointing", "pointing-game hit (1) or miss (0)", "hit"),
)


@dataclass(frozen=True)
class RankedUnit:
    """One scored unit of a record: its score under the ranking metric and where to find it."""

    score: float
    index: int  # the image's index in the data set
    label: int
    pointing: dict | None  # the unit's pointing result ({"hit", "point", ...}) when there is one


def _unit_score(key: str, result: object) -> float:
    if key == "miou":
        tp, fp, fn, _ = next(iter(result["counts"].values()))  # type: ignore[index]  # first threshold
        return tp / (tp + fp + fn) if tp + fp + fn else 0.0
    if key == "energy":
        return float(result)  # type: ignore[arg-type]
    return float(result["hit"])  # type: ignore[index]


def ranking_key(records: list[dict], method: str) -> str | None:
    """The first metric of RANKINGS that scored any unit of ``method``, or None."""
    for key, _, _ in RANKINGS:
        for record in records:
            if record["status"] == "ok" and any(v is not None for v in record["methods"][method].get(key) or ()):
                return key
    return None


def ranked_units(records: list[dict], method: str, key: str) -> list[RankedUnit]:
    """Every unit of ``method`` scored by metric ``key``, best first (ties: image index, then label)."""
    units = []
    for record in records:
        if record["status"] != "ok":
            continue
        results = record["methods"][method]
        pointing = results.get("pointing") or [None] * len(record["units"])
        for position, info in enumerate(record["units"]):
            value = (results.get(key) or [None] * len(record["units"]))[position]
            if value is not None:
                units.append(RankedUnit(_unit_score(key, value), record["index"], info["label"], pointing[position]))
    return sorted(units, key=lambda u: (-u.score, u.index, u.label))


def example_figures(evaluator: Evaluator, records: list[dict], count: int) -> dict[str, ExampleFigure]:
    """method -> figure of its ``count`` best and ``count`` worst units (maps recomputed for them)."""
    p, dataset = evaluator.protocol, evaluator.dataset
    figures = {}
    for spec in evaluator.methods:
        key = ranking_key(records, spec.label)
        if key is None:
            continue
        sentence, score_name = next((text, short) for k, text, short in RANKINGS if k == key)
        ranked = ranked_units(records, spec.label, key)
        best = ranked[:count]
        worst = [u for u in ranked[::-1][:count] if u not in best]
        chosen = [("best", u) for u in best] + [("worst", u) for u in worst]
        samples = [dataset[u.index] for _, u in chosen]
        units = [next(x for x in evaluator.units([s]) if x.label == u.label) for s, (_, u) in zip(samples, chosen)]
        panels: dict[str, list[ExamplePanel]] = {"best": [], "worst": []}
        for (tag, unit), sample, saliency in zip(chosen, samples, evaluator.maps(spec, units)):
            class_name = short_class_names([dataset.class_names[unit.label]])[dataset.class_names[unit.label]]
            outcome = "" if unit.pointing is None or key == "pointing" else (", hit" if unit.pointing["hit"] else ", miss")
            title = f"{tag}: {sample.image_id}\n{class_name}, {score_name} {unit.score:.2f}{outcome}"
            panels[tag].append(_panel(sample, saliency, unit, key, title, p.tolerance))
        smoothing = p.smoothing_for(spec)
        point = f"; the arg-max point is that of the map smoothed with s = {smoothing:g}" if smoothing > 0 else ""
        ranking = f"Ranked by {sentence}: the {len(best)} best units (top row), then the {len(worst)} worst{point}."
        figures[spec.label] = ExampleFigure(example_figure([row for row in panels.values() if row]), ranking)
    return figures


def _panel(sample: Sample, saliency: Tensor, unit: RankedUnit, key: str, title: str, tolerance: float) -> ExamplePanel:
    """The panel of ``unit``: its image shrunk to at most DISPLAY_SIZE, its (h, w) input-grid map
    resized onto the same grid, the ground truth of metric ``key`` and the pointing game's point."""
    width, height = sample.size
    scale = min(1.0, DISPLAY_SIZE / max(width, height))
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(sample.image.resize(shown, Image.BILINEAR))
    on_image = to_original(saliency, shown[1], shown[0]).numpy()
    truth = (sample.segmentation or {}).get(unit.label) if key == "miou" else sample.regions.get(unit.label)
    point = (float(unit.pointing["point"][0]), float(unit.pointing["point"][1])) if unit.pointing else None
    return ExamplePanel(image, on_image, (width, height), title, truth, point, tolerance)
