"""From per-image records to ``results.json``.

Schema: ``{"<method>": {"<metric>": {"all": float, "difficult": float | None, "per_class": {...}, ...}},
"config": {...}}``. Pointing game, energy and mIoU are in percent; insertion/deletion AUCs are
fractions in [0, 1]; sensitivity and target-sensitivity values are similarities in [−1, 1]; the grid
pointing game is a fraction in [0, 1] (``all`` = the mean cell score, 0.25 for a uniform map). ``difficult`` is None when
the run has no difficult flags (ImageNet, or no flag file).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import contrast, grid
from .pointing import PointingUnit, pointing_accuracy
from .segmentation import SegmentationUnit, miou_scores
from .sensitivity import summarise


def _units(records: list[dict], method: str, key: str) -> list[tuple[dict, object]]:
    """(unit info, per-unit result) for every unit of every ok record that has a result for ``key``."""
    out = []
    for record in records:
        if record["status"] != "ok":
            continue
        values = record["methods"][method].get(key)
        if values is None:
            continue
        out += [(info, value) for info, value in zip(record["units"], values) if value is not None]
    return out


def _difficult(info: dict) -> bool:
    return info["difficult"] is True


def _pointing(units: list[tuple[dict, dict]], class_names: Sequence[str], has_flags: bool) -> dict:
    scored = [PointingUnit(info["label"], value["hit"]) for info, value in units]
    everything = pointing_accuracy(scored, tuple(class_names))
    hard = pointing_accuracy([u for u, (info, _) in zip(scored, units) if _difficult(info)], tuple(class_names))
    return {
        "all": everything["accuracy"],
        "difficult": hard["accuracy"] if has_flags else None,
        "per_class": {name: v["accuracy"] for name, v in everything["per_class"].items()},
        "overall_hit_rate": everything["overall"],
        "difficult_overall_hit_rate": hard["overall"] if has_flags else None,
        "pairs": everything["pairs"],
        "difficult_pairs": hard["pairs"] if has_flags else None,
        "classes": everything["classes"],
        "constant_maps": sum(bool(value["constant"]) for _, value in units),
        "per_class_counts": {name: [v["hits"], v["pairs"]] for name, v in everything["per_class"].items()},
        "difficult_per_class": {name: v["accuracy"] for name, v in hard["per_class"].items()} if has_flags else None,
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _mean_percent(values: list[float]) -> float | None:
    return float(100.0 * np.mean(values)) if values else None


def _energy(units: list[tuple[dict, float]], all_units: int, class_names: Sequence[str], has_flags: bool) -> dict:
    per_class: dict[str, list[float]] = {}
    for info, value in units:
        per_class.setdefault(class_names[info["label"]], []).append(value)
    return {
        "all": _mean_percent([v for _, v in units]),
        "difficult": _mean_percent([v for info, v in units if _difficult(info)]) if has_flags else None,
        "per_class": {name: _mean_percent(v) for name, v in sorted(per_class.items())},
        "units": len(units),
        "undefined": all_units - len(units),
    }


def _miou(units: list[tuple[dict, dict]], threshold: str, class_names: Sequence[str], has_flags: bool) -> dict:
    def scored(selection: list[tuple[dict, dict]]) -> list[SegmentationUnit]:
        return [
            SegmentationUnit(
                info["label"], tuple(v["counts"][threshold]), math.nan if v["ap"] is None else v["ap"], v["constant"]
            )
            for info, v in selection
        ]

    everything = miou_scores(scored(units), class_names)
    hard = miou_scores(scored([u for u in units if _difficult(u[0])]), class_names)
    return {
        "all": everything["miou"],
        "difficult": hard["miou"] if has_flags else None,
        "threshold": threshold,
        **{k: v for k, v in everything.items() if k != "miou"},
    }


def _insdel(units: list[tuple[dict, dict]], mode: str, class_names: Sequence[str], has_flags: bool) -> dict:
    per_class: dict[str, list[float]] = {}
    for info, value in units:
        per_class.setdefault(class_names[info["label"]], []).append(value[mode])
    return {
        "all": _mean([v[mode] for _, v in units]),
        "difficult": _mean([v[mode] for info, v in units if _difficult(info)]) if has_flags else None,
        "per_class": {name: _mean(v) for name, v in sorted(per_class.items())},
        "units": len(units),
        "better": "higher" if mode == "insertion" else "lower",
    }


def _sensitivity(units: list[tuple[dict, dict]], mode: str, measures: Sequence[str]) -> dict | None:
    curves = [value[mode] for _, value in units if mode in value]
    if not curves:
        return None
    steps = curves[0]["steps"]
    values = np.array([[[math.nan if v is None else v for v in step] for step in c["values"]] for c in curves])
    summary = summarise(values.transpose(1, 0, 2), measures)
    primary = measures[0]
    return {
        "all": summary[primary]["average_randomised"],
        "difficult": None,
        "per_class": {},
        "measure": primary,
        "steps": steps,
        "units": len(curves),
        "curves": summary,
        "note": "similarity to the trained model's map, averaged over the randomised steps; lower = more model-sensitive",
    }


def aggregate(records: list[dict], methods: Sequence[str], config: dict, class_names: Sequence[str]) -> dict:
    """``results.json`` from the records (any order; duplicates by index are an error)."""
    indices = [r["index"] for r in records]
    if len(set(indices)) != len(indices):
        raise ValueError("records hold an image twice.")
    records = sorted(records, key=lambda r: r["index"])
    has_flags = config["data"]["difficult_flags"] is not None
    metrics = config["metrics"]
    results: dict = {}
    for method in methods:
        entry: dict = {}
        if "pointing" in metrics:
            entry["pointing"] = _pointing(_units(records, method, "pointing"), class_names, has_flags)
            unsmoothed = _units(records, method, "pointing_unsmoothed")
            if unsmoothed:
                entry["pointing_unsmoothed"] = _pointing(unsmoothed, class_names, has_flags)
        if "energy" in metrics:
            defined = _units(records, method, "energy")
            boxed = sum(info["boxes_scored"] for r in records if r["status"] == "ok" for info in r["units"])
            entry["energy"] = _energy(defined, boxed, class_names, has_flags)
        if "miou" in metrics:
            units = _units(records, method, "miou")
            for position, threshold in enumerate(config["miou"]["thresholds"]):
                key = "miou" if position == 0 else f"miou@{threshold}"
                entry[key] = _miou(units, threshold, class_names, has_flags)
        if "insdel" in metrics:
            units = _units(records, method, "insdel")
            entry["insertion"] = _insdel(units, "insertion", class_names, has_flags)
            entry["deletion"] = _insdel(units, "deletion", class_names, has_flags)
        if "sensitivity" in metrics:
            units = _units(records, method, "sensitivity")
            for mode in config["sensitivity"]["modes"]:
                summary = _sensitivity(units, mode, config["sensitivity"]["measures"])
                if summary is not None:
                    entry[f"sensitivity_{mode}"] = summary
        if "grid_pointing" in metrics:
            scores = [
                s for r in records if r["status"] == "ok" for s in r["methods"][method].get("grid_pointing", [])
            ]
            entry["grid_pointing"] = grid.summarise(scores)
        if "target_sensitivity" in metrics:
            units = [value for _, value in _units(records, method, "target_sensitivity")]
            for name in contrast.CONTRASTS:
                entry[f"target_sensitivity_{name}"] = contrast.summarise(units, name)
        results[method] = entry
    results["config"] = config
    return results
