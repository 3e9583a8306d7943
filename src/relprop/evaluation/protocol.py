"""Every parameter of an evaluation run, validated, and its record in ``results.json``'s ``config``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .methods import MethodSpec
from .segmentation import Threshold
from .sensitivity import MEASURES

METRICS = ("pointing", "energy", "miou", "sensitivity", "insdel", "grid_pointing", "target_sensitivity")


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol (evaluation.md §1-5); defaults are the documented ones.

    ``smoothing``/``reduce`` None = per method (§1.3): s = 0.02 for input-resolution maps, 0 for
    layer-resolution maps and the center baseline; max |·| over channels for the gradient family,
    the signed sum otherwise.
    """

    metrics: tuple[str, ...] = ("pointing", "miou")
    input_mode: str = "fixed"
    input_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    tolerance: float = 15.0
    smoothing: float | None = None
    reduce: str | None = None
    energy_negative: str = "clip"
    miou_thresholds: tuple[str, ...] = ("mean", "zero")
    miou_sign: str = "signed"
    miou_normalize: str = "minmax"
    sensitivity_modes: tuple[str, ...] = ("cascading", "independent")
    sensitivity_granularity: str = "block"
    sensitivity_init: str = "reset_parameters"
    sensitivity_reset_bn: str = "affine_only"
    sensitivity_target: str = "fixed"
    sensitivity_seed: int = 0
    sensitivity_measures: tuple[str, ...] = MEASURES
    sensitivity_images: int = 200
    insdel_step: int = 224
    insdel_score: str = "softmax"
    grid_mosaics: int = 100
    grid_pool: int = 200
    grid_candidates: int | None = None
    grid_cell: int | None = None
    grid_seed: int = 0
    target_seed: int = 0
    thresholds: tuple[Threshold, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}.")
        if self.input_mode not in ("fixed", "shorter_side"):
            raise ValueError(f"input mode must be 'fixed' or 'shorter_side'; got {self.input_mode!r}.")
        if self.tolerance <= 0:
            raise ValueError(f"tolerance must be positive; got {self.tolerance}.")
        if self.smoothing is not None and self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0; got {self.smoothing}.")
        if self.reduce not in (None, "sum", "sum_abs", "max_abs"):
            raise ValueError(f"reduce must be sum, sum_abs or max_abs; got {self.reduce!r}.")
        if self.energy_negative not in ("clip", "abs"):
            raise ValueError(f"energy negative handling must be 'clip' or 'abs'; got {self.energy_negative!r}.")
        object.__setattr__(self, "thresholds", tuple(Threshold.parse(t) for t in self.miou_thresholds))
        if not self.thresholds:
            raise ValueError("give at least one mIoU threshold.")
        bad = [m for m in self.sensitivity_measures if m not in MEASURES]
        if bad:
            raise ValueError(f"unknown similarity measure(s) {', '.join(bad)}; choose from {', '.join(MEASURES)}.")
        bad = [m for m in self.sensitivity_modes if m not in ("cascading", "independent")]
        if bad or not self.sensitivity_modes:
            raise ValueError("sensitivity modes must be among: cascading, independent.")
        if self.insdel_step < 1:
            raise ValueError(f"insertion/deletion step must be >= 1 pixel; got {self.insdel_step}.")
        if self.grid_mosaics < 1 or self.grid_pool < 4 or (self.grid_candidates is not None and self.grid_candidates < 4):
            raise ValueError(
                "the grid pointing game needs --grid-mosaics >= 1, --grid-pool >= 4 and --grid-candidates >= 4; "
                f"got {self.grid_mosaics}, {self.grid_pool}, {self.grid_candidates}."
            )
        if self.grid_cell is not None and self.grid_cell < 8:
            raise ValueError(f"--grid-cell must be at least 8 pixels; got {self.grid_cell}.")

    @property
    def cell_size(self) -> int:
        """Side of a grid-pointing cell in pixels (default: the input size)."""
        return self.input_size if self.grid_cell is None else self.grid_cell

    def smoothing_for(self, spec: MethodSpec) -> float:
        return spec.default_smoothing if self.smoothing is None else self.smoothing

    def reduce_for(self, spec: MethodSpec) -> str:
        return spec.default_reduce if self.reduce is None else self.reduce

    def record(self, methods: list[MethodSpec]) -> dict:
        """The parameters as written under ``config`` (only those of the metrics that were run)."""
        p = {k: v for k, v in asdict(self).items() if k != "thresholds"}
        config: dict = {
            "metrics": list(self.metrics),
            "targets": "ground-truth classes (every class present in an image)",
            "input": {
                "mode": self.input_mode,
                "size": self.input_size,
                "mean": list(self.mean),
                "std": list(self.std),
                "resize": "whole image, bilinear, align_corners=False, antialiased; no crop",
            },
            "channel_reduction": {s.label: self.reduce_for(s) for s in methods if not s.model_free},
        }
        if "pointing" in self.metrics:
            config["pointing"] = {
                "tolerance_px": self.tolerance,
                "map_to_image": "bilinear, align_corners=False",
                "smoothing": {s.label: self.smoothing_for(s) for s in methods},
                "unsmoothed_variant": "pointing_unsmoothed (s = 0) for every method whose smoothing is > 0",
                "argmax_ties": "first in row-major order",
                "center_point": "(W/2, H/2)",
                "aggregation": "mean over classes with >= 1 scored pair",
            }
        if "energy" in self.metrics:
            config["energy"] = {"negative": self.energy_negative, "grid": "input grid, region resized nearest-exact"}
        if "miou" in self.metrics:
            config["miou"] = {
                "thresholds": [str(t) for t in self.thresholds],
                "default_threshold": str(self.thresholds[0]),
                "sign": self.miou_sign,
                "normalize": self.miou_normalize,
                "resolution": "input grid (ground truth resized nearest-exact)",
                "aggregate": "dataset_2class (also per_unit_fg, per_class_fg, pixel accuracy, mAP)",
            }
        if "sensitivity" in self.metrics:
            config["sensitivity"] = {k.removeprefix("sensitivity_"): p[k] for k in p if k.startswith("sensitivity_")}
        if "insdel" in self.metrics:
            config["insdel"] = {
                "step_px": self.insdel_step,
                "score": self.insdel_score,
                "deletion_substrate": "zero",
                "insertion_substrate": "blur (11x11, sigma 5)",
                "order": "decreasing signed map, ties row-major",
            }
        if "grid_pointing" in self.metrics:
            config["grid_pointing"] = {
                "mosaics": self.grid_mosaics,
                "pool": self.grid_pool,
                "candidates": "every image" if self.grid_candidates is None else f"the first {self.grid_candidates}",
                "cell_px": self.cell_size,
                "seed": self.grid_seed,
                "layout": "2x2; cell k at row k // 2, column k % 2; each image resized to cell_px x cell_px",
                "pool_rule": "top-1 = the image's only ground-truth class at cell_px; most confident (softmax) "
                "image per class; the `pool` most confident of those",
                "draw": "numpy default_rng(seed), 4 different pool images per mosaic; list in mosaics.json",
                "score": "positive relevance inside the class's cell / positive relevance of the mosaic",
                "undefined": "a map without positive relevance scores 0 (counted as undefined)",
                "record": "mosaic k is evaluated with the record of image k",
            }
        if "target_sensitivity" in self.metrics:
            config["target_sensitivity"] = {
                "seed": self.target_seed,
                "other_classes": {
                    "random": "uniform over the classes absent from the image, numpy default_rng([seed, index, class])",
                    "second": "the absent class the model ranks highest (its second choice when top-1 is right)",
                },
                "measures": ["ssim", "spearman"],
                "maps": "channel reduction as for the other metrics",
            }
        return _plain(config)


def _plain(value: object) -> object:
    """Tuples -> lists, recursively, so that a config equals its JSON round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
