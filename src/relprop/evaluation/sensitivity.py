"""Model sensitivity: similarity of maps under model-parameter randomisation (evaluation.md §4.4).

The model is split into *units* ordered from the output to the input. Step 0 is the trained
model; cascading step k has units 1…k re-initialised, independent step k only unit k. Unit j is
always drawn after ``torch.manual_seed(seed + j)`` (inside a forked RNG, so the caller's random
state is untouched), hence the same seed gives the same weights and an independent step equals the
last unit of the cascading step with the same index. All randomisation happens on a deep copy:
the caller's model is never modified.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

Mode = Literal["cascading", "independent"]
MEASURES = ("spearman_abs", "spearman", "ssim", "hog")
_NORMS = (nn.modules.batchnorm._BatchNorm,)


# ------------------------------------------------------------------------------------------ units


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomisation_units(model: nn.Module, granularity: str = "block") -> list[tuple[str, list[str]]]:
    """``[(unit name, [module paths])]`` ordered from the output to the input.

    ``"layer"``: every module that owns parameters (conv, linear, …); ``"block"``: the model's
    top-level children with ``Sequential``/``ModuleList`` containers expanded one level (VGG-16: its 16
    conv/linear layers; ResNet-50: fc, the 16 bottlenecks, the stem). In both, a BatchNorm joins the
    unit of the module before it, and modules without parameters are left out.
    """
    if granularity == "layer":
        candidates = [(name, m) for name, m in model.named_modules() if name and _owns_parameters(m)]
    elif granularity == "block":
        candidates = []
        for name, child in model.named_children():
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                candidates += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
            else:
                candidates.append((name, child))
        candidates = [(name, m) for name, m in candidates if _has_parameters(m)]
    else:
        raise ValueError(f"granularity must be 'block' or 'layer'; got {granularity!r}.")
    units: list[tuple[str, list[str]]] = []
    for name, module in candidates:
        if isinstance(module, _NORMS) and units:
            units[-1][1].append(name)
        else:
            units.append((name, [name]))
    if not units:
        raise ValueError("the model has no parameters to randomise.")
    return units[::-1]


def _reinitialise(module: nn.Module, init: str, reset_bn: str) -> None:
    """Re-draw the parameters of ``module`` and its sub-modules in place."""
    for sub in module.modules():
        if isinstance(sub, _NORMS):
            if reset_bn == "all":
                sub.reset_parameters()
            elif reset_bn == "affine_only" and sub.affine:
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)
            elif reset_bn not in ("all", "affine_only", "none"):
                raise ValueError(f"reset_bn must be 'affine_only', 'all' or 'none'; got {reset_bn!r}.")
        elif _owns_parameters(sub) and isinstance(getattr(sub, "weight", None), Tensor) and init != "reset_parameters":
            weight, bias = sub.weight, getattr(sub, "bias", None)
            if init == "xavier_u01":
                nn.init.xavier_uniform_(weight)
                if bias is not None:
                    nn.init.uniform_(bias, 0.0, 1.0)
            elif init == "normal_0.01":
                nn.init.normal_(weight, 0.0, 0.01)
                if bias is not None:
                    nn.init.zeros_(bias)
            else:
                raise ValueError(f"init must be 'reset_parameters', 'xavier_u01' or 'normal_0.01'; got {init!r}.")
        elif _owns_parameters(sub) and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def randomise_unit(model: nn.Module, paths: Sequence[str], index: int, *, init: str, reset_bn: str, seed: int) -> None:
    """Re-initialise the modules ``paths`` of ``model`` in place, deterministically for (seed, index)."""
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed + index)
        for path in paths:
            _reinitialise(model.get_submodule(path), init, reset_bn)


def randomised_models(
    model: nn.Module,
    mode: Mode = "cascading",
    *,
    granularity: str = "block",
    init: str = "reset_parameters",
    reset_bn: str = "affine_only",
    seed: int = 0,
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(unit name, randomised copy)`` for steps 1…K; the copy is reused and changed between steps."""
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent'; got {mode!r}.")
    work = copy.deepcopy(model)
    for index, (name, paths) in enumerate(randomisation_units(work, granularity), start=1):
        saved = {p: copy.deepcopy(work.get_submodule(p).state_dict()) for p in paths} if mode == "independent" else {}
        randomise_unit(work, paths, index, init=init, reset_bn=reset_bn, seed=seed)
        yield name, work
        for path, state in saved.items():
            work.get_submodule(path).load_state_dict(state)


# ------------------------------------------------------------------------------------- similarity


def _minmax(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def _percentile_scale(a: np.ndarray, percentile: float, signed: bool) -> np.ndarray:
    """Adebayo's visualisation scaling: divide by the percentile of |a| and clip ([−1, 1] or [0, 1])."""
    top = np.percentile(np.abs(a), percentile)
    scaled = a / top if top > 0 else np.zeros_like(a)
    return np.clip(scaled, -1.0 if signed else 0.0, 1.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of two flattened arrays (average ranks for ties); NaN when either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of the min-max-normalised maps: Gaussian window σ = 1.5, K1 0.01, K2 0.03, population covariance."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            _minmax(a),
            _minmax(b),
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of the HOG descriptors (9 orientations, 16×16 cells, 3×3 blocks, L2-Hys) of the
    min-max-normalised maps; NaN when a map is smaller than one block (48×48)."""
    from skimage.feature import hog

    if min(a.shape) < 48:
        return float("nan")

    def describe(m: np.ndarray) -> np.ndarray:
        return hog(_minmax(m), orientations=9, pixels_per_cell=(16, 16), cells_per_block=(3, 3), block_norm="L2-Hys")

    return spearman(describe(a), describe(b))


def similarity(
    reference: np.ndarray,
    other: np.ndarray,
    measure: str,
    clip_percentile: float | None = None,
    ssim_data_range: float = 1.0,
) -> float:
    """One similarity measure of §4.4 between two (H, W) maps."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if measure == "spearman_abs":
        a, b = np.abs(a), np.abs(b)
    if clip_percentile is not None:
        signed = measure != "spearman_abs"
        a, b = _percentile_scale(a, clip_percentile, signed), _percentile_scale(b, clip_percentile, signed)
    if measure in ("spearman_abs", "spearman"):
        return spearman(a, b)
    if measure == "ssim":
        return ssim(a, b, ssim_data_range)
    if measure == "hog":
        return hog_similarity(a, b)
    raise ValueError(f"unknown similarity measure '{measure}'; choose from {', '.join(MEASURES)}.")


# ------------------------------------------------------------------------------------ the protocol


Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""(model, x (N, C, H, W), targets (N,)) -> maps (N, h, w)."""


@dataclass
class SensitivityCurves:
    """``values[k, i, m]``: measure ``measures[m]`` between unit i's map at step 0 and at step k."""

    mode: str
    steps: list[str]
    measures: tuple[str, ...]
    values: np.ndarray

    def summary(self) -> dict:
        """See :func:`summarise`."""
        return summarise(self.values, self.measures)


def summarise(values: np.ndarray, measures: Sequence[str]) -> dict:
    """Per measure, from ``values[k, i, m]`` (step, unit, measure): the mean and std over units at every
    step (NaN-aware), their mean over the randomised steps 1…K, and the number of undefined values."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps where every unit is undefined
        for m, name in enumerate(measures):
            column = values[:, :, m]
            mean, std = np.nanmean(column, axis=1), np.nanstd(column, axis=1)
            out[name] = {
                "mean": [_finite(v) for v in mean],
                "std": [_finite(v) for v in std],
                "average_randomised": _finite(np.nanmean(mean[1:])) if len(mean) > 1 else None,
                "undefined": int(np.isnan(column).sum()),
            }
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def model_sensitivity(
    model: nn.Module,
    explain: Explain,
    x: Tensor,
    targets: Tensor,
    *,
    mode: Mode = "cascading",
    granularity: str = "block",
    init: str = "reset_parameters",
    reset_bn: str = "affine_only",
    target_mode: str = "fixed",
    seed: int = 0,
    measures: Sequence[str] = MEASURES,
    clip_percentile: float | None = None,
    reference: Tensor | None = None,
) -> SensitivityCurves:
    """Similarity of each unit's map at every randomisation step to its map for the trained model.

    ``target_mode="fixed"`` explains ``targets`` at every step; ``"randomised_argmax"`` explains the
    randomised model's top-1 class (Adebayo). ``reference``: the step-0 maps (N, h, w), if already computed.
    """
    if target_mode not in ("fixed", "randomised_argmax"):
        raise ValueError(f"target_mode must be 'fixed' or 'randomised_argmax'; got {target_mode!r}.")
    base = (reference if reference is not None else explain(model, x, targets)).detach().cpu().double().numpy()
    step_names, rows = ["original"], [base]
    for name, randomised in randomised_models(
        model, mode, granularity=granularity, init=init, reset_bn=reset_bn, seed=seed
    ):
        step_targets = targets
        if target_mode == "randomised_argmax":
            with torch.no_grad():
                step_targets = randomised(x).argmax(dim=1)
        rows.append(explain(randomised, x, step_targets).detach().cpu().double().numpy())
        step_names.append(name)
    values = np.array(
        [
            [[similarity(base[i], row[i], m, clip_percentile) for m in measures] for i in range(len(base))]
            for row in rows
        ]
    )
    return SensitivityCurves(mode, step_names, tuple(measures), values)
