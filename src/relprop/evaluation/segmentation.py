"""mIoU of attribution maps with a parameterised threshold (evaluation.md §3.3).

Per unit (image, class): map A and ground-truth mask G on the same grid, optional ignore mask V.
``prepare`` applies the sign handling and normalisation, ``foreground`` the threshold,
``confusion`` counts TP/FP/FN/TN over valid pixels, and ``miou_scores`` aggregates the units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

THRESHOLDS = ("mean", "zero", "value", "top_fraction", "gt_area", "otsu")


@dataclass(frozen=True)
class Threshold:
    """A threshold strategy: ``mean`` (default), ``zero``, ``value:t``, ``top_fraction:q``, ``gt_area``, ``otsu``."""

    kind: str = "mean"
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        kind, _, value = text.partition(":")
        if kind not in THRESHOLDS:
            raise ValueError(
                f"unknown threshold '{text}'; choose from mean, zero, value:T, top_fraction:Q, gt_area, otsu."
            )
        needs_value = kind in ("value", "top_fraction")
        if needs_value != bool(value):
            raise ValueError(f"threshold '{kind}' {'needs' if needs_value else 'takes no'} a value (e.g. value:0.5).")
        number = float(value) if value else None
        if kind == "top_fraction" and not 0 < number <= 1:  # type: ignore[operator]
            raise ValueError(f"top_fraction needs 0 < q <= 1; got {value}.")
        return cls(kind, number)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def prepare(saliency: np.ndarray, sign: str = "signed", normalize: str = "minmax") -> np.ndarray:
    """Steps 2-3 of §3.3: sign handling (signed | positive | abs), then minmax | max | none normalisation."""
    a = np.asarray(saliency, dtype=np.float64)
    if sign == "positive":
        a = np.maximum(a, 0.0)
    elif sign == "abs":
        a = np.abs(a)
    elif sign != "signed":
        raise ValueError(f"sign must be 'signed', 'positive' or 'abs'; got {sign!r}.")
    if normalize == "minmax":
        span = a.max() - a.min()
        return (a - a.min()) / span if span > 0 else np.zeros_like(a)
    if normalize == "max":
        top = a.max()
        return a / top if top > 0 else np.zeros_like(a)
    if normalize != "none":
        raise ValueError(f"normalize must be 'minmax', 'max' or 'none'; got {normalize!r}.")
    return a


def foreground(raw: np.ndarray, normalized: np.ndarray, threshold: Threshold, gt: np.ndarray) -> np.ndarray:
    """Predicted foreground P (bool, map's shape); a constant map gives all background (§3.3 step 3-4)."""
    flat = normalized.reshape(-1)
    if threshold.kind == "zero":
        return raw > 0
    if np.all(flat == flat[0]):
        return np.zeros(normalized.shape, dtype=bool)
    if threshold.kind == "mean":
        return normalized > normalized.mean()
    if threshold.kind == "value":
        return normalized > threshold.value
    if threshold.kind in ("top_fraction", "gt_area"):
        count = math.ceil(threshold.value * flat.size) if threshold.kind == "top_fraction" else int(gt.sum())
        order = np.argsort(-flat, kind="stable")  # ties: row-major order
        picked = np.zeros(flat.size, dtype=bool)
        picked[order[:count]] = True
        return picked.reshape(normalized.shape)
    if threshold.kind == "otsu":
        return otsu_bins(normalized) > 0
    raise ValueError(f"unknown threshold {threshold}")


def otsu_bins(values: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's split of a histogram of ``values`` (``bins`` equal bins over [min, max]).

    Returns, per value, 0 for the lower class and 1 for the upper one: the split k maximises the
    between-class variance w₀ w₁ (μ₀ − μ₁)² with class 0 = bins ≤ k (first maximum on ties).
    """
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    index = np.minimum(((values - low) / (high - low) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index.ravel(), minlength=bins).astype(np.float64)
    centres = low + (np.arange(bins) + 0.5) * (high - low) / bins
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    mass0 = np.cumsum(counts * centres)[:-1]
    mu0, mu1 = mass0 / np.maximum(w0, 1), (np.sum(counts * centres) - mass0) / np.maximum(w1, 1)
    split = int(np.argmax(w0 * w1 * (mu0 - mu1) ** 2))
    return (index > split).astype(np.uint8)


def confusion(predicted: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) over the valid pixels (``ignore`` False)."""
    valid = np.ones(gt.shape, dtype=bool) if ignore is None else ~ignore
    p, g = predicted & valid, gt & valid
    tp = int((p & g).sum())
    fp = int((p & ~g).sum())
    fn = int((~p & g & valid).sum())
    tn = int(valid.sum()) - tp - fp - fn
    return tp, fp, fn, tn


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds (scikit-learn's definition).

    NaN when there is no positive label.
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last_of_value]
    precision = tp / (last_of_value + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def unit_average_precision(normalized: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Chefer's per-image AP: scores [1 − A, A] against one-hot [background, foreground], flattened (§3.3)."""
    valid = np.ones(gt.shape, dtype=bool) if ignore is None else ~ignore
    a, g = normalized[valid], gt[valid]
    return average_precision(np.r_[1 - a, a], np.r_[~g, g])


@dataclass(frozen=True)
class SegmentationUnit:
    """One (image, class) unit: its class, (TP, FP, FN, TN), its AP and whether its map was constant."""

    label: int
    counts: tuple[int, int, int, int]
    ap: float = float("nan")
    constant: bool = False


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def miou_scores(units: Iterable[SegmentationUnit], class_names: Sequence[str]) -> dict:
    """Aggregations of §3.3 step 6, in percent.

    ``miou`` (dataset_2class): (ΣTP/Σ(TP+FP+FN) + ΣTN/Σ(TN+FN+FP)) / 2 over all units;
    ``per_unit_fg``: mean of TP/(TP+FP+FN) over units where it is defined;
    ``per_class_fg``: per class ΣTP/Σ(TP+FP+FN), mean over classes with ≥ 1 unit;
    plus pixel accuracy and mAP (mean per-unit AP over units with foreground).
    """
    units = list(units)
    if not units:
        return {"miou": None, "units": 0}
    counts = np.array([u.counts for u in units], dtype=np.int64)
    tp, fp, fn, tn = counts.sum(axis=0)
    iou_fg, iou_bg = _ratio(tp, tp + fp + fn), _ratio(tn, tn + fn + fp)
    unit_fg = [c[0] / (c[0] + c[1] + c[2]) for c in counts if c[0] + c[1] + c[2] > 0]
    per_class = {}
    for label in sorted({u.label for u in units}):
        rows = counts[[u.label == label for u in units]].sum(axis=0)
        value = _ratio(rows[0], rows[0] + rows[1] + rows[2])
        per_class[class_names[label]] = None if value is None else 100.0 * value
    class_values = [v for v in per_class.values() if v is not None]
    aps = [u.ap for u in units if not math.isnan(u.ap)]
    return {
        "miou": _percent((iou_fg + iou_bg) / 2) if iou_fg is not None and iou_bg is not None else None,
        "iou_fg": _percent(iou_fg),
        "iou_bg": _percent(iou_bg),
        "pixel_accuracy": _percent(_ratio(tp + tn, tp + fp + fn + tn)),
        "map": _percent(float(np.mean(aps))) if aps else None,
        "per_unit_fg": _percent(float(np.mean(unit_fg))) if unit_fg else None,
        "per_unit_fg_excluded": len(units) - len(unit_fg),
        "per_class_fg": float(np.mean(class_values)) if class_values else None,
        "per_class": per_class,
        "units": len(units),
        "constant_maps": sum(u.constant for u in units),
    }
