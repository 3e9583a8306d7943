"""Per-image evaluation: one JSON-serialisable record per image, for every method and metric.

A record holds the image's units (one per ground-truth class, with its difficult flag) and, per
method, the per-unit raw results (pointing hit and point, energy proportion, confusion counts per
mIoU threshold, AP, insertion/deletion AUC, sensitivity curves, similarity to the maps of other
classes). The record of image k also carries grid-pointing mosaic k (``mosaic``) and, per method,
its four cell scores (``grid_pointing``). Aggregation happens later from the
records alone (:mod:`relprop.evaluation.results`), so an interrupted run can resume from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from . import grid
from .contrast import CONTRASTS, random_class, second_choice, target_similarity
from .datasets import DataError, EvaluationDataset, Sample
from .insdel import auc, causal_curve
from .maps import gaussian_smooth, input_shape, to_grid, to_input, to_original
from .methods import MethodSpec, explain
from .pointing import argmax_point, center_point, energy_proportion, hit, is_constant
from .protocol import Protocol
from .segmentation import confusion, foreground, prepare, unit_average_precision
from .sensitivity import model_sensitivity


@dataclass
class Unit:
    """One (image, class) pair on its way through the evaluation."""

    sample: Sample
    label: int
    x: Tensor  # (3, h, w) on the device

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[1], self.x.shape[2]


def _none_if_nan(value: float) -> float | None:
    return None if value != value else float(value)


MODEL_METRICS = ("insdel", "sensitivity", "grid_pointing", "target_sensitivity")
"""Metrics that run the model itself (so need one even for the ``center`` baseline)."""


def check_model_needed(methods: list[MethodSpec], metrics: Iterable[str], has_model: bool) -> None:
    """ValueError when ``methods`` or ``metrics`` need a model and there is none."""
    if has_model:
        return
    if any(not m.model_free for m in methods):
        raise ValueError("a model (--model) is needed for every method except 'center'.")
    needs_model = [m for m in MODEL_METRICS if m in metrics]
    if needs_model:
        raise ValueError(f"{', '.join(needs_model)} need a model (--model).")


def build_explainers(methods: list[MethodSpec], model: nn.Module | None) -> dict[str, Any]:
    """label -> method object for ``model`` (None for the center baseline); bad method options raise here."""
    return {m.label: m.build(model) for m in methods}  # type: ignore[arg-type]


class BatchInterrupted(KeyboardInterrupt):
    """KeyboardInterrupt during :meth:`Evaluator.records`; ``records`` hold the methods finished before it."""

    def __init__(self, records: list[dict]) -> None:
        super().__init__()
        self.records = records


class Evaluator:
    """Turns samples into records for a model, a list of methods and a protocol."""

    def __init__(
        self,
        dataset: EvaluationDataset,
        model: nn.Module | None,
        methods: list[MethodSpec],
        protocol: Protocol,
        device: torch.device,
        batch_size: int = 8,
        explainers: dict[str, Any] | None = None,
        mosaics: list[dict] | None = None,
    ) -> None:
        """``explainers``: the :func:`build_explainers` result when already built (else built here);
        ``mosaics``: the grid-pointing mosaics (:func:`select_mosaics`), needed for that metric."""
        self.dataset, self.model, self.methods, self.protocol = dataset, model, methods, protocol
        if "grid_pointing" in protocol.metrics and mosaics is None:
            raise ValueError("the grid pointing game needs its mosaics (select_mosaics).")
        self.mosaics = mosaics or []
        self.device, self.batch_size = device, batch_size
        check_model_needed(methods, protocol.metrics, model is not None)
        self.explainers = build_explainers(methods, model) if explainers is None else explainers
        self.seconds = {m.label: 0.0 for m in methods}
        """Time spent per method (maps and metrics) in :meth:`records`."""

    # ------------------------------------------------------------------------------------ records

    def error_record(self, index: int, path: str, message: str) -> dict:
        """The record of an image that could not be read (counted, never scored; retried on resume)."""
        return {"index": index, "id": self.dataset.image_id(index), "status": "error", "path": path, "error": message}

    def records(self, samples: list[Sample], methods: list[MethodSpec] | None = None) -> list[dict]:
        """One record per sample with the results of ``methods`` (default: all), maps computed in batches
        of ``batch_size`` units. Interrupted (KeyboardInterrupt), it raises :class:`BatchInterrupted`
        holding the records of the methods already finished."""
        units = self.units(samples)
        others = self._other_classes(units) if "target_sensitivity" in self.protocol.metrics else []
        mosaics = [self.mosaics[s.index] for s in samples if s.index < len(self.mosaics)]
        cells = self._mosaic_units(samples, mosaics) if mosaics else []
        per_method: dict[str, dict[str, list[Any]]] = {}
        per_mosaic: dict[str, list[list[float | None]]] = {}
        try:
            for spec in self.methods if methods is None else methods:
                started = time.perf_counter()
                results = self._method_results(spec, units, others)
                if cells:
                    per_mosaic[spec.label] = self._grid_scores(spec, cells)
                per_method[spec.label] = results
                self.seconds[spec.label] += time.perf_counter() - started
        except KeyboardInterrupt as exc:
            finished = self._records(samples, units, per_method, mosaics, per_mosaic) if per_method else []
            raise BatchInterrupted(finished) from exc
        return self._records(samples, units, per_method, mosaics, per_mosaic)

    def _records(
        self,
        samples: list[Sample],
        units: list[Unit],
        per_method: dict[str, dict[str, list]],
        mosaics: Sequence[dict] = (),
        per_mosaic: dict[str, list[list[float | None]]] | None = None,
    ) -> list[dict]:
        out = []
        mosaic_of = {m["number"]: position for position, m in enumerate(mosaics)}
        for sample in samples:
            mine = [i for i, u in enumerate(units) if u.sample is sample]
            position = mosaic_of.get(sample.index)
            record = {
                "index": sample.index,
                "id": sample.image_id,
                "status": "ok",
                "size": list(sample.size),
                "units": [self._unit_info(units[i]) for i in mine],
                "methods": {
                    label: {k: [v[i] for i in mine] for k, v in res.items()} for label, res in per_method.items()
                },
            }
            if position is not None:
                record["mosaic"] = mosaics[position]
                for label, scores in (per_mosaic or {}).items():
                    record["methods"][label]["grid_pointing"] = scores[position]
            if sample.invalid:
                record["invalid_boxes"] = [sample.invalid[label] for label in sorted(sample.invalid)]
            out.append(record)
        return out

    def units(self, samples: list[Sample]) -> list[Unit]:
        """The (image, class) units of ``samples``: every ground-truth class (for mIoU also every class of
        the segmentation mask), each carrying its image on the input grid."""
        p = self.protocol
        units = []
        for sample in samples:
            width, height = sample.size
            x = to_input(sample.image, input_shape(width, height, p.input_mode, p.input_size), p.mean, p.std)
            x = x.to(self.device)
            labels = set(sample.labels) - set(sample.invalid)  # invalid boxes: only a mask, if any, is scored
            if "miou" in p.metrics and sample.segmentation:
                labels |= set(sample.segmentation)
            units += [Unit(sample, label, x) for label in sorted(labels)]
        return units

    @staticmethod
    def _unit_info(unit: Unit) -> dict:
        s = unit.sample
        return {
            "label": unit.label,
            "difficult": s.difficult(unit.label),
            "boxes_scored": unit.label in s.regions and unit.label not in s.all_difficult,
            "has_segmentation": bool(s.segmentation) and unit.label in s.segmentation,
        }

    # ------------------------------------------------------------------------------------ maps

    def maps(self, spec: MethodSpec, units: list[Unit], model: nn.Module | None = None) -> list[Tensor]:
        """Map (h, w) on the input grid of every unit, in batches of units sharing an input shape."""
        method = self.explainers[spec.label] if model is None else spec.build(model)
        reduce = self.protocol.reduce_for(spec)
        maps: list[Tensor | None] = [None] * len(units)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, unit in enumerate(units):
            by_shape.setdefault(unit.shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                x = torch.stack([units[i].x for i in chunk])
                targets = torch.tensor([units[i].label for i in chunk], device=self.device)
                for i, m in zip(chunk, explain(spec, method, x, targets, reduce)):  # type: ignore[arg-type]
                    maps[i] = m.cpu()
        return maps  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ metrics

    def _method_results(self, spec: MethodSpec, units: list[Unit], others: list[dict[str, int]]) -> dict[str, list[Any]]:
        p = self.protocol
        maps = self.maps(spec, units)
        results: dict[str, list[Any]] = {}
        if "target_sensitivity" in p.metrics:
            results["target_sensitivity"] = self._target_sensitivity(spec, units, maps, others)
        if "pointing" in p.metrics:
            smoothing = p.smoothing_for(spec)
            results["pointing"] = [self._pointing(spec, u, m, smoothing) for u, m in zip(units, maps)]
            if smoothing > 0:
                results["pointing_unsmoothed"] = [self._pointing(spec, u, m, 0.0) for u, m in zip(units, maps)]
        if "energy" in p.metrics:
            results["energy"] = [self._energy(u, m) for u, m in zip(units, maps)]
        if "miou" in p.metrics:
            results["miou"] = [self._segmentation(u, m) for u, m in zip(units, maps)]
        if "insdel" in p.metrics:
            results["insdel"] = [self._insdel(u, m) for u, m in zip(units, maps)]
        if "sensitivity" in p.metrics:
            results["sensitivity"] = self._sensitivity(spec, units, maps)
        return results

    # ------------------------------------------------------------------------ class discrimination

    def _other_classes(self, units: list[Unit]) -> list[dict[str, int]]:
        """Per unit, the classes its map is compared with: ``{"random": c, "second": c}`` (:mod:`.contrast`)."""
        assert self.model is not None
        logits: dict[int, Tensor] = {}
        by_shape: dict[tuple[int, int], dict[int, Tensor]] = {}
        for u in units:
            by_shape.setdefault(u.shape, {})[u.sample.index] = u.x
        for images in by_shape.values():
            order = list(images)
            for chunk in batches(order, self.batch_size):
                with torch.no_grad():
                    rows = self.model(torch.stack([images[i] for i in chunk])).cpu()
                logits.update(zip(chunk, rows))
        out = []
        for u in units:
            present = set(u.sample.labels) | set(u.sample.segmentation or ())
            scores = logits[u.sample.index]
            out.append(
                {
                    "random": random_class(present, scores.numel(), self.protocol.target_seed, u.sample.index, u.label),
                    "second": second_choice(scores, present),
                }
            )
        return out

    def _target_sensitivity(
        self, spec: MethodSpec, units: list[Unit], maps: list[Tensor], others: list[dict[str, int]]
    ) -> list[dict]:
        contrast_units = [Unit(u.sample, o[c], u.x) for u, o in zip(units, others) for c in CONTRASTS]
        contrast_maps = self.maps(spec, contrast_units)
        out = []
        for i, (reference, classes) in enumerate(zip(maps, others)):
            out.append(
                {
                    c: {"class": classes[c], **target_similarity(reference, contrast_maps[len(CONTRASTS) * i + j])}
                    for j, c in enumerate(CONTRASTS)
                }
            )
        return out

    def _mosaic_units(self, samples: list[Sample], mosaics: list[dict]) -> list[Unit]:
        """Four units per mosaic (one per cell, in cell order), each the whole mosaic with its cell's class."""
        size = self.protocol.cell_size
        anchors = {s.index: s for s in samples}
        units = []
        for mosaic in mosaics:
            cells = torch.stack([self._cell_image(i, size) for i in mosaic["images"]])
            x = grid.assemble(cells).to(self.device)
            units += [Unit(anchors[mosaic["number"]], label, x) for label in mosaic["labels"]]
        return units

    def _cell_image(self, index: int, size: int) -> Tensor:
        p = self.protocol
        return to_input(self.dataset[index].image, (size, size), p.mean, p.std)

    def _grid_scores(self, spec: MethodSpec, cells: list[Unit]) -> list[list[float | None]]:
        """Per mosaic, its four cell scores (None: a map without positive relevance)."""
        maps = self.maps(spec, cells)
        scores = [_none_if_nan(grid.cell_share(m, i % grid.CELLS)) for i, m in enumerate(maps)]
        return [scores[k : k + grid.CELLS] for k in range(0, len(scores), grid.CELLS)]

    def _pointing(self, spec: MethodSpec, unit: Unit, saliency: Tensor, smoothing: float) -> dict | None:
        s = unit.sample
        if unit.label not in s.regions or unit.label in s.all_difficult:
            return None
        width, height = s.size
        if spec.model_free:
            point, constant = center_point(width, height), False
        else:
            full = gaussian_smooth(to_original(saliency, height, width), smoothing)
            point, constant = argmax_point(full), is_constant(full)
        return {
            "hit": hit(s.regions[unit.label], point, self.protocol.tolerance),
            "point": list(point),
            "constant": constant,
        }

    def _energy(self, unit: Unit, saliency: Tensor) -> float | None:
        s = unit.sample
        if unit.label not in s.regions or unit.label in s.all_difficult:
            return None
        region = to_grid(s.regions[unit.label], unit.shape)
        return _none_if_nan(energy_proportion(saliency, region, self.protocol.energy_negative))

    def _segmentation(self, unit: Unit, saliency: Tensor) -> dict | None:
        s = unit.sample
        if not s.segmentation or unit.label not in s.segmentation:
            return None
        p = self.protocol
        gt = to_grid(s.segmentation[unit.label], unit.shape)
        ignore = to_grid(s.ignore, unit.shape) if s.ignore is not None else None
        raw = saliency.numpy()
        normalized = prepare(raw, p.miou_sign, p.miou_normalize)
        counts = {str(t): list(confusion(foreground(raw, normalized, t, gt), gt, ignore)) for t in p.thresholds}
        return {
            "counts": counts,
            "ap": _none_if_nan(unit_average_precision(normalized, gt, ignore)),
            "constant": bool(np.all(normalized == normalized.flat[0])),
        }

    def _insdel(self, unit: Unit, saliency: Tensor) -> dict:
        assert self.model is not None
        score_fn = self._score_function(unit.label)
        step = self.protocol.insdel_step
        return {
            mode: auc(
                causal_curve(score_fn, unit.x, saliency.to(unit.x.device), mode, step=step, chunk=self.batch_size * 4)
            )
            for mode in ("insertion", "deletion")
        }

    def _score_function(self, label: int):  # type: ignore[no-untyped-def]
        model, kind = self.model, self.protocol.insdel_score

        def score(batch: Tensor) -> Tensor:
            logits = model(batch)  # type: ignore[misc]
            if kind == "softmax":
                return logits.softmax(dim=1)[:, label]
            if kind == "sigmoid":
                return logits.sigmoid()[:, label]
            return logits[:, label]

        return score

    def _sensitivity(self, spec: MethodSpec, units: list[Unit], maps: list[Tensor]) -> list[dict | None]:
        p = self.protocol
        out: list[dict | None] = [None] * len(units)
        chosen = [i for i, u in enumerate(units) if u.sample.index < p.sensitivity_images]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in chosen:
            by_shape.setdefault(units[i].shape, []).append(i)
        for indices in by_shape.values():
            group = [units[i] for i in indices]
            x = torch.stack([u.x for u in group])
            targets = torch.tensor([u.label for u in group], device=self.device)
            reference = torch.stack([maps[i] for i in indices])

            def explain_group(model: nn.Module, xs: Tensor, ts: Tensor, group: list[Unit] = group) -> Tensor:
                return torch.stack(self.maps(spec, [Unit(u.sample, int(t), u.x) for u, t in zip(group, ts)], model))

            curves = {}
            for mode in p.sensitivity_modes:
                curves[mode] = model_sensitivity(
                    self.model,
                    explain_group,
                    x,
                    targets,  # type: ignore[arg-type]
                    mode=mode,
                    granularity=p.sensitivity_granularity,
                    init=p.sensitivity_init,
                    reset_bn=p.sensitivity_reset_bn,
                    target_mode=p.sensitivity_target,
                    seed=p.sensitivity_seed,
                    measures=p.sensitivity_measures,
                    reference=reference,
                )
            for position, i in enumerate(indices):
                out[i] = {
                    mode: {"steps": c.steps, "values": [[_none_if_nan(v) for v in step[position]] for step in c.values]}
                    for mode, c in curves.items()
                }
        return out


def batches(indices: Iterable[int], size: int) -> Iterable[list[int]]:
    """Consecutive chunks of at most ``size`` indices."""
    chunk: list[int] = []
    for index in indices:
        chunk.append(index)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def mosaic_candidates(
    dataset: EvaluationDataset, model: nn.Module, protocol: Protocol, device: torch.device, batch_size: int = 8
) -> list[grid.Candidate]:
    """The model's top-1 and confidence for every image with exactly one ground-truth class among the
    first ``protocol.grid_candidates`` images (all by default), each resized to the grid's cell size;
    unreadable images are left out."""
    p, size = protocol, protocol.cell_size
    count = len(dataset) if p.grid_candidates is None else min(p.grid_candidates, len(dataset))
    out: list[grid.Candidate] = []
    for chunk in batches(range(count), batch_size):
        kept, xs = [], []
        for index in chunk:
            try:
                sample = dataset[index]
            except DataError:
                continue
            if len(set(sample.labels)) == 1:
                kept.append((index, sample.labels[0]))
                xs.append(to_input(sample.image, (size, size), p.mean, p.std))
        if not xs:
            continue
        with torch.no_grad():
            probabilities = model(torch.stack(xs).to(device)).softmax(dim=1).cpu()
        for (index, label), row in zip(kept, probabilities):
            out.append(grid.Candidate(index, label, int(row.argmax()), float(row[label])))
    return out


def select_mosaics(
    dataset: EvaluationDataset, model: nn.Module, protocol: Protocol, device: torch.device, batch_size: int = 8
) -> dict:
    """``{"pool": [...], "mosaics": [...]}``: the grid pool (:func:`grid.select_pool`) with each image's
    confidence, and ``protocol.grid_mosaics`` mosaics drawn from it (:func:`grid.draw_mosaics`)."""
    candidates = mosaic_candidates(dataset, model, protocol, device, batch_size)
    pool = grid.select_pool(candidates, protocol.grid_pool)
    mosaics = grid.draw_mosaics(pool, protocol.grid_mosaics, protocol.grid_seed)
    return {
        "candidates": len(candidates),
        "correct": sum(c.correct for c in candidates),
        "pool": [{"index": c.index, "label": c.label, "confidence": c.confidence} for c in pool],
        "mosaics": mosaics,
    }
