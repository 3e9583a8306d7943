"""Example heat-maps for the report: each method's best and worst units."""

from __future__ import annotations

import numpy as np

from .maps import input_shape
from .report import example_figure
from .runner import Evaluator


def _position(results: dict, key: str, position: int) -> object:
    values = results.get(key)
    return values[position] if values else None


def unit_scores(records: list[dict], method: str) -> list[tuple[float, int, int, str]]:
    """(score, image index, label, description) per unit: IoU_fg (first mIoU threshold), else the
    energy proportion, else the pointing hit."""
    out = []
    for record in records:
        if record["status"] != "ok":
            continue
        results = record["methods"][method]
        for position, info in enumerate(record["units"]):
            miou, energy, pointing = (_position(results, k, position) for k in ("miou", "energy", "pointing"))
            if miou is not None:
                tp, fp, fn, _ = next(iter(miou["counts"].values()))  # type: ignore[index]
                score, what = (tp / (tp + fp + fn) if tp + fp + fn else 0.0), "IoU"
            elif energy is not None:
                score, what = float(energy), "energy"  # type: ignore[arg-type]
            elif pointing is not None:
                score, what = float(pointing["hit"]), "hit"  # type: ignore[index]
            else:
                continue
            out.append((score, record["index"], info["label"], f"{what} {score:.2f}"))
    return out


def example_figures(evaluator: Evaluator, records: list[dict], count: int) -> dict[str, bytes]:
    """method -> PNG of its ``count`` best and ``count`` worst units (maps recomputed for them)."""
    p, dataset = evaluator.protocol, evaluator.dataset
    figures = {}
    for spec in evaluator.methods:
        scores = sorted(unit_scores(records, spec.label), key=lambda s: (-s[0], s[1], s[2]))
        best = scores[:count]
        worst = [s for s in scores[::-1][:count] if s not in best]
        if not best:
            continue
        units, panels = [], []
        for tag, (_, index, label, what) in [("best", s) for s in best] + [("worst", s) for s in worst]:
            sample = dataset[index]
            units.append(next(u for u in evaluator.units([sample]) if u.label == label))
            height, width = input_shape(*sample.size, p.input_mode, p.input_size)
            image = np.asarray(sample.image.resize((width, height)))
            panels.append((image, f"{tag}: {sample.image_id}\n{dataset.class_names[label][:24]}, {what}"))
        maps = evaluator.maps(spec, units)
        figures[spec.label] = example_figure([(image, m.numpy(), title) for (image, title), m in zip(panels, maps)])
    return figures
