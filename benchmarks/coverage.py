"""Coverage: which classifiers each explanation method handles, relprop next to Captum and Zennit.

Every classification model of ``torchvision.models.list_models(module=torchvision.models)`` and a fixed
list of timm models is built with random weights (``torch.manual_seed(0)``) and explained with relprop's
RSP, AE (r = 2), RAP, LRP composite and Grad-CAM, Captum's ``LRP`` and Zennit's ``EpsilonPlusFlat``
composite with its canonizers.  A cell is ✔ when the map, on a batch of 2 in float32,

* has the input's shape and is finite,
* is not constant in either sample,
* is batch invariant: sample 1 explained alone differs from sample 1 of the batch by ≤ 1e-4 of its max|R|
  (where the plain gradient itself varies more, the model's float32 forward routes differently in the two
  calls, and the cell is checked again in float64: ``routing_limited``),
* conserves where the method claims to (float64, see ``CONSERVATION``),

and otherwise shows the first check that failed or the error, in one short line.  Each model runs in its
own subprocess at the smallest input side of ``SIZES`` that its forward pass accepts.  Results are cached
in a JSON file, so that after a rule change only the failing rows need to be recomputed::

    nice -n 15 python benchmarks/coverage.py --out docs/coverage.md            # everything not cached
    python benchmarks/coverage.py --rerun failed --out docs/coverage.md          # only the cells not ✔
    python benchmarks/coverage.py --models resnet18,timm:convnext_tiny --methods rsp,zennit

Needs ``relprop[timm,bench]`` (timm, zennit).  This is a benchmark, not a test: the full run takes hours
on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

TIMM_MODELS = [
    "resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "ecaresnet50d", "efficientnet_b0",
    "tf_efficientnet_lite0", "mobilenetv3_large_100", "mixnet_s", "ghostnet_100", "regnety_016", "rexnet_100",
    "densenet121", "dla34", "cspresnet50", "hrnet_w18_small", "repvgg_a2", "inception_v3", "vgg16", "convnext_tiny",
]
TRANSFORMER_FAMILIES = ("vit_", "swin_", "swin3d", "maxvit")
"""torchvision families outside relprop's scope (attention): relprop must refuse them."""
SIZES = (64, 96, 128, 160, 192, 224)
BATCH = 2
INVARIANCE_TOLERANCE = 1e-4
METHODS = ["rsp", "ae", "rap", "lrp", "gradcam", "captum_lrp", "zennit"]
TITLES = {
    "rsp": "RSP", "ae": "AE r=2", "rap": "RAP", "lrp": "LRP composite", "gradcam": "Grad-CAM",
    "captum_lrp": "Captum LRP", "zennit": "Zennit EpsilonPlusFlat",
}
LIBRARY = {"rsp": "relprop", "ae": "relprop", "rap": "relprop", "lrp": "relprop", "gradcam": "relprop",
           "captum_lrp": "Captum", "zennit": "Zennit"}
CONSERVATION = {
    "rsp": ("seed", 1e-6, False),
    "rap": ("zero", 1e-6, False),
    "lrp": ("logit", 1e-6, True),
    "captum_lrp": ("logit", 1e-2, True),
    "zennit": ("logit", 1e-2, True),
}
"""method -> (what Σ R equals, relative tolerance, on a bias-free copy).  relprop's claims (docs/methods.md):
RSP conserves the seed's sum (biases play no part), RAP's total is 0, LRP sums to the target logit on a
bias-free network (checked with ε = 0 on its Linear layers: the ε-rule's stabiliser leaks ε / z, and a
bias-free random network's logits can be as small as 1e-8).  Captum and Zennit make no exactness claim
(ε-stabilised denominators); they are held to 1e-2 of the logit on the same bias-free copy."""
RESOLUTION = 1e-13
"""Where float64 cannot resolve a claimed total (the map's mass Σ|R| many orders above |Σ R|), a
conservation error within ``RESOLUTION · Σ|R|`` (about 1,000 rounding units of the mass) is all the
check can confirm: such a cell is ✔ with a footnote marker, not ✘."""
DEFAULT_CACHE = Path(__file__).with_name("coverage_cache.json")


# ----------------------------------------------------------------------------------------------- models


def model_ids() -> list[str]:
    """``torchvision:<name>`` for every torchvision classifier, then ``timm:<name>`` for the timm list."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision:{n}" for n in sorted(names)] + [f"timm:{n}" for n in TIMM_MODELS]


def build(model_id: str) -> nn.Module:
    """The model with random weights (seed 0), in eval mode; pretrained-weight settings where they
    change the graph (Inception-v3 and GoogLeNet: ``transform_input=True``, no auxiliary heads)."""
    library, name = model_id.split(":", 1)
    torch.manual_seed(0)
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision

    kwargs: dict[str, Any] = {}
    if name in ("inception_v3", "googlenet"):
        kwargs = {"aux_logits": False, "init_weights": True, "transform_input": True}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def is_transformer(model_id: str) -> bool:
    library, name = model_id.split(":", 1)
    return library == "torchvision" and name.startswith(TRANSFORMER_FAMILIES)


def smallest_size(model: nn.Module) -> int:
    """The smallest side in :data:`SIZES` whose forward pass works (batch 1, float32)."""
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size
        except Exception:  # noqa: BLE001 - any failure means "too small"
            continue
    raise RuntimeError(f"no input side in {SIZES} runs the forward pass")


def zero_biases(model: nn.Module) -> nn.Module:
    """In place: every ``bias`` parameter 0 and every BatchNorm running mean 0 (BN becomes a pure scale)."""
    with torch.no_grad():
        for m in model.modules():
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
    return model


# ---------------------------------------------------------------------------------------------- methods


Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_method(key: str, model: nn.Module, model_id: str, conservation: bool = False) -> Explain:
    """``(x, targets) -> relevance`` for method ``key`` on ``model`` (construction errors propagate)."""
    import relprop

    if key in ("rsp", "ae", "rap", "lrp", "gradcam"):
        method = {
            "rsp": lambda: relprop.RSP(model),
            "ae": lambda: relprop.AE(model, ratio=2.0),
            "rap": lambda: relprop.get_method("rap")(model),
            "lrp": lambda: relprop.LRPComposite(model, epsilon=0.0 if conservation else 1e-6),
            "gradcam": lambda: relprop.get_method("gradcam")(model),
        }[key]()
        return lambda x, t: method.attribute(x, target=t)
    model = copy.deepcopy(model)  # the peers attach rules / canonizers to the model and may not undo them on failure
    if key == "captum_lrp":
        from captum.attr import LRP

        lrp = LRP(model)
        return lambda x, t: lrp.attribute(x, target=t).detach()
    if key == "zennit":
        return _zennit(model, model_id)
    raise ValueError(f"unknown method {key!r}; choose from {', '.join(METHODS)}")


def _zennit(model: nn.Module, model_id: str) -> Explain:
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    name = model_id.split(":", 1)[1]
    torchvision_model = model_id.startswith("torchvision:")
    if torchvision_model and name.startswith(("resnet", "resnext", "wide_resnet")):
        canonizer = ResNetCanonizer()
    elif torchvision_model and name.startswith("vgg"):
        canonizer = VGGCanonizer()
    else:
        canonizer = SequentialMergeBatchNorm()

    def explain(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        composite = EpsilonPlusFlat(canonizers=[canonizer])
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(x, lambda out: out * torch.nn.functional.one_hot(targets, out.shape[1]).to(out))
        return relevance.detach()

    return explain


def seed_sum(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ of RSP's seed per sample, (N,), computed from the seed layer's activation and gradient."""
    import relprop

    method = relprop.RSP(model)
    try:
        module = model.get_submodule(method.seed_layer)
    except AttributeError:  # the seed is a function call (DenseNet's final F.relu): relprop's own seed
        return _engine_seed(method, x, targets).sum(dim=(1, 2, 3))
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured[-1])
    finally:
        handle.remove()
    seed = captured[-1].detach() * grad.mean(dim=(2, 3), keepdim=True)
    seed = seed / seed.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1)
    return seed.sum(dim=(1, 2, 3))


def _engine_seed(method: Any, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RSP's seed as its engine computes it (for seed layers that are no module)."""
    from relprop.engine.forward import record_forward

    engine = method._engine
    traced = engine.trace_for((x.shape, x.dtype, x.device))
    with torch.no_grad():
        record = record_forward(traced.graph, x, traced.seed_op, set(traced.plan.uses), traced.plan.replay)
        return engine.seed.relevance(record, targets, traced.graph, traced.seed_layer)


def conservation_error(
    key: str, model: nn.Module, model_id: str, x: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float | None]:
    """Relative conservation error of method ``key`` in float64 (the model and x already in float64), and
    the map's conditioning ``max Σ|R| / |Σ R|`` (None where the expected total is 0): float64 cannot
    resolve an error below about 1e-16 of ``Σ|R|``."""
    what = CONSERVATION[key][0]
    relevance = make_method(key, model, model_id, conservation=True)(x, targets)
    sums, masses = relevance.sum(dim=(1, 2, 3)), relevance.abs().sum(dim=(1, 2, 3))
    if what == "zero":
        return (sums.abs() / masses).max().item(), None
    if what == "seed":
        expected = seed_sum(model, x, targets)
    else:
        with torch.no_grad():
            expected = model(x).gather(1, targets[:, None]).squeeze(1)
    return ((sums - expected).abs() / expected.abs()).max().item(), (masses / expected.abs()).max().item()


# ------------------------------------------------------------------------------------------------ checks


def short_error(error: BaseException) -> str:
    """One short line: ``no rule: Sigmoid at 'blocks.0.0.se.gate'`` for a missing rule, else the
    exception type and the start of its first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    rule = re.search(r"has no relevance rule for (.+?) at '([^']*)'", text)
    if rule:
        return f"no rule: {rule.group(1)} at '{rule.group(2)}'"
    if "attention" in text.lower() and "convolutional" in text.lower():
        path = re.search(r"'([^']*)'", text)
        return f"refused: attention at '{path.group(1)}'" if path else "refused: attention"
    text = text if len(text) <= 90 else text[:87] + "..."
    return f"{type(error).__name__}: {text}"


def check(explain: Explain, x: torch.Tensor, targets: torch.Tensor) -> tuple[str, float]:
    """'' when the float32 checks pass (else what failed) and the batch-invariance error."""
    relevance = explain(x, targets)
    if not isinstance(relevance, torch.Tensor) or relevance.shape != x.shape:
        return f"shape {tuple(getattr(relevance, 'shape', ()))} != {tuple(x.shape)}", float("nan")
    if not torch.isfinite(relevance).all():
        return "not finite", float("nan")
    flat = relevance.flatten(1)
    if ((flat.amax(dim=1) - flat.amin(dim=1)) <= 0).any():
        return "constant map", float("nan")
    alone = explain(x[1:2], targets[1:2])
    invariance = ((alone[0] - relevance[1]).abs().max() / relevance[1].abs().max()).item()
    if not invariance <= INVARIANCE_TOLERANCE:
        return f"batch variance {invariance:.1e}", invariance
    return "", invariance


def gradient_batch_variance(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> float:
    """Batch variance of the plain gradient d logit / d x (sample 1 alone vs in the batch, of its max): how
    far the model's own float32 forward pass moves between the two calls.  No relprop rule is involved;
    above the tolerance it means the forward pass itself took a different discrete decision (a max-pool
    winner whose two candidates differ by less than the float32 rounding of a batched convolution)."""

    def gradient(inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inputs = inputs.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model(inputs).gather(1, t[:, None]).sum(), inputs)
        return grad

    batch, alone = gradient(x, targets), gradient(x[1:2], targets[1:2])
    return ((alone[0] - batch[1]).abs().max() / batch[1].abs().max()).item()


def routing_limited(key: str, model: nn.Module, model_id: str, x: torch.Tensor, targets: torch.Tensor,
                    cell: dict[str, Any]) -> None:
    """Where a map's float32 batch variance exceeds the tolerance, tell the model's discontinuity from the
    method's: if the plain gradient varies beyond the tolerance too, the float32 forward pass itself routes
    differently alone and in the batch, and the method is judged by its batch invariance in float64 (where
    batched and single convolutions agree to ~1e-16 and the routing is the same).  Updates ``cell``."""
    gradient = gradient_batch_variance(model, x, targets)
    cell["gradient_invariance"] = gradient
    if not gradient > INVARIANCE_TOLERANCE:
        return
    model64 = copy.deepcopy(model).double()
    problem, invariance64 = check(make_method(key, model64, model_id), x.double(), targets)
    cell["invariance64"] = invariance64
    if not problem:
        routing = (f"float32 batch variance {cell['invariance']:.1e}, where the plain gradient's is {gradient:.1e} "
                   f"(the forward pass's own routing); float64 {invariance64:.1e}")
        cell.update(ok=True, note="", routing_limited=routing)


def _fits_in_memory(model: nn.Module) -> bool:
    """Whether a float64 copy of the model, and the peers' deep copies of it, fit the free memory (Linux)."""
    need = 3 * 8 * sum(p.numel() for p in model.parameters())
    try:
        with open("/proc/meminfo") as meminfo:
            free = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return True
    return need < free - (2 << 30)


def run_model(model_id: str, methods: list[str]) -> dict[str, Any]:
    """Every requested method on one model: {"size", "params", "seconds", "cells": {method: cell}}."""
    start = time.perf_counter()
    model = build(model_id)
    size = smallest_size(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, size, size, generator=gen)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    cells: dict[str, dict[str, Any]] = {}
    for key in methods:
        t0 = time.perf_counter()
        try:
            problem, invariance = check(make_method(key, model, model_id), x, targets)
            cells[key] = {"ok": not problem, "note": problem, "invariance": invariance}
            if problem.startswith("batch variance"):
                routing_limited(key, model, model_id, x, targets, cells[key])
        except Exception as error:  # noqa: BLE001 - every failure is a result
            cells[key] = {"ok": False, "note": short_error(error)}
        cells[key]["seconds"] = round(time.perf_counter() - t0, 2)
    claims = [k for k in methods if k in CONSERVATION and cells[k]["ok"]]
    if claims and not _fits_in_memory(model):
        for key in claims:
            cells[key].update(ok=False, note="conservation not measured: no memory for a float64 copy")
        claims = []
    for bias_free in (False, True):  # float64 conservation, on the model as built, then on its bias-free copy
        claimed = [k for k in claims if CONSERVATION[k][2] == bias_free]
        if not claimed:
            continue
        model = zero_biases(model.double()) if bias_free else model.double()
        for key in claimed:
            try:
                error, conditioning = conservation_error(key, model, model_id, x.double(), targets)
            except Exception as exc:  # noqa: BLE001
                cells[key].update(ok=False, note=f"float64: {short_error(exc)}")
                continue
            cells[key].update(conservation=error, conditioning=conditioning)
            if error <= CONSERVATION[key][1]:
                continue
            mass = "" if conditioning is None else f"; the map's mass is {conditioning:.0e}× its sum"
            if conditioning is not None and error <= RESOLUTION * conditioning:
                cells[key].update(resolution_limited=True, note=f"Σ R conserved to {error / conditioning:.0e} "
                                  f"of the mass, the resolution of float64{mass}")
            else:
                cells[key].update(ok=False, note=f"Σ R off by {error:.1e} (rel.){mass}")
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "params": params, "seconds": round(time.perf_counter() - start, 1), "cells": cells}


# ------------------------------------------------------------------------------------------------ driver


def run_in_subprocess(model_id: str, methods: list[str], timeout: float) -> dict[str, Any]:
    """:func:`run_model` in a fresh interpreter (isolates crashes and frees memory); failures become cells."""
    command = [sys.executable, __file__, "--worker", model_id, "--methods", ",".join(methods)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode == 0 and lines:
            return json.loads(lines[-1])
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:90]
    except subprocess.TimeoutExpired:
        why = f"timed out after {timeout:.0f} s"
    cell = {"ok": False, "note": f"worker failed: {why}"}
    return {"size": None, "params": None, "seconds": round(time.perf_counter() - start, 1),
            "cells": {k: dict(cell) for k in methods}}


def select_models(spec: str | None) -> list[str]:
    """All model ids, or those named in ``spec`` (comma-separated; ``timm:`` prefix for timm, a bare name
    for torchvision, or a name matching both with ``*:name``)."""
    every = model_ids()
    if not spec:
        return every
    chosen = []
    for item in spec.split(","):
        item = item.strip()
        full = item if ":" in item else f"torchvision:{item}"
        matches = [m for m in every if m == full or (full.startswith("*:") and m.endswith(":" + full[2:]))]
        if not matches:
            raise SystemExit(f"unknown model {item!r}")
        chosen += matches
    return chosen


def needs_run(entry: dict[str, Any] | None, methods: list[str], rerun: str) -> list[str]:
    """The methods of one cached row to (re)compute under ``rerun`` ('missing', 'failed' or 'all')."""
    cells = (entry or {}).get("cells", {})
    if rerun == "all":
        return methods
    return [k for k in methods if k not in cells or (rerun == "failed" and not cells[k]["ok"])]


def render(cache: dict[str, Any]) -> str:
    """docs/coverage.md: method totals per model group, then one row per model."""
    groups = [
        ("torchvision CNNs", [m for m in cache if m.startswith("torchvision:") and not is_transformer(m)]),
        ("timm list", [m for m in cache if m.startswith("timm:")]),
        ("torchvision transformers (out of scope)", [m for m in cache if is_transformer(m)]),
    ]
    lines = [
        "# Coverage",
        "",
        "Which classifiers each method explains, with random weights (`torch.manual_seed(0)`), a batch of 2",
        "at the smallest input side of 64, 96, …, 224 px the model accepts. ✔: the float32 map has the",
        "input's shape, is finite, is not constant in either sample, and is batch invariant (sample 1 alone",
        f"vs in the batch ≤ {INVARIANCE_TOLERANCE:g} of max|R|); where the method claims conservation it also holds in float64:",
        "RSP keeps the seed's sum (≤ 1e-6 relative), RAP's total is 0 (≤ 1e-6 of Σ|R|), relprop's LRP",
        "composite (checked with ε = 0 on its Linear layers) sums to the target logit on a bias-free copy (all",
        "biases and BatchNorm running means zeroed; ≤ 1e-6); where a hidden convolution reads a signed input",
        "(linear bottlenecks, ConvNeXt), its z⁺ rule shares a negative output by its negative contributions",
        "([methods.md](methods.md)), which conserves Σ R there as well. Captum's LRP and Zennit's EpsilonPlusFlat (with `ResNetCanonizer` on",
        "torchvision ResNets, `VGGCanonizer` on VGGs, `SequentialMergeBatchNorm` elsewhere) make no",
        "exactness claim and are held to 1e-2 of the logit on the same bias-free copy. Otherwise the cell",
        "shows the first failed check or the error; a conservation miss also gives the map's mass Σ abs(R) as a",
        "multiple of its sum, since float64 cannot resolve an error below about 1e-16 of the mass (RSP doubles",
        "the positive and negative relevance at every convolution with a kernel > 1, so on deep networks the",
        "mass can exceed 1e10× the sum). ✔¹: every check passed, but float64 resolves the conservation only",
        f"to rounding: Σ R is within {RESOLUTION:g} of Σ abs(R) of the claimed total, though not within the relative",
        "tolerance of the total itself (both figures are listed below the tables). ✔²: the float32 map's",
        "batch variance exceeds the bound, but so does the plain gradient's (autograd, no relprop rule): the",
        "model's float32 forward pass itself takes a different discrete route alone and in the batch (on",
        "VGG-19: one max-pool winner), which no rule can smooth; such a cell is checked again in float64, where it must be batch",
        "invariant to 1e-4 of max|R| (figures below the tables). Transformers are",
        "outside relprop's scope: their relprop cells show the refusal.",
        "",
        "Regenerate with `python benchmarks/coverage.py --out docs/coverage.md` (results are cached in",
        "`benchmarks/coverage_cache.json`; `--rerun failed` recomputes only the cells that are not ✔).",
        "",
        "## Totals",
        "",
        "| group | models | " + " | ".join(f"{TITLES[k]} ({LIBRARY[k]})" for k in METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for title, ids in groups:
        counts = [sum(1 for m in ids if cache[m]["cells"].get(k, {}).get("ok")) for k in METHODS]
        lines.append(f"| {title} | {len(ids)} | " + " | ".join(str(c) for c in counts) + " |")
    for title, ids in groups:
        lines += ["", f"## {title}", "", "| model | px | " + " | ".join(TITLES[k] for k in METHODS) + " |",
                  "|---|---|" + "---|" * len(METHODS)]
        for m in ids:
            entry = cache[m]
            cells = [_cell(entry["cells"].get(k)) for k in METHODS]
            lines.append(f"| {m.split(':', 1)[1]} | {entry.get('size') or '–'} | " + " | ".join(cells) + " |")
    limited = [(m, k, cell["note"]) for m, entry in cache.items() for k, cell in entry["cells"].items()
               if cell.get("ok") and cell.get("resolution_limited")]
    if limited:
        lines += ["", "## ✔¹: conservation confirmed to float64's resolution only", "",
                  "| model | method | conservation |", "|---|---|---|"]
        lines += [f"| {m.split(':', 1)[1]} | {TITLES[k]} | {note} |" for m, k, note in limited]
    routed = [(m, k, cell["routing_limited"]) for m, entry in cache.items() for k, cell in entry["cells"].items()
              if cell.get("ok") and cell.get("routing_limited")]
    if routed:
        lines += ["", "## ✔²: batch invariant in float64; in float32 the model's own forward pass routes differently",
                  "", "| model | method | batch invariance |", "|---|---|---|"]
        lines += [f"| {m.split(':', 1)[1]} | {TITLES[k]} | {note} |" for m, k, note in routed]
    total = sum(entry.get("seconds") or 0 for entry in cache.values())
    lines += ["", f"Sum of the per-model run times in the cache: {total / 3600:.1f} h (CPU)."]
    return "\n".join(lines) + "\n"


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    if not cell["ok"]:
        return "✘ " + cell["note"].replace("|", "/")
    return "✔" + ("¹" if cell.get("resolution_limited") else "") + ("²" if cell.get("routing_limited") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated model names (timm:name for timm; default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (e.g. docs/coverage.md)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="JSON cache of the per-model results")
    parser.add_argument("--rerun", choices=("missing", "failed", "all"), default="missing",
                        help="which cached cells to recompute")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per model")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' prints must not mix with the result line
            result = run_model(args.worker, methods)
        print(json.dumps(result))
        return 0
    cache: dict[str, Any] = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    start = time.perf_counter()
    for model_id in sorted(select_models(args.models), key=is_transformer):  # the out-of-scope ones last
        todo = needs_run(cache.get(model_id), methods, args.rerun)
        if not todo:
            continue
        result = run_in_subprocess(model_id, todo, args.timeout)
        entry = cache.setdefault(model_id, {"cells": {}})
        entry["cells"].update(result.pop("cells"))
        entry.update({k: v for k, v in result.items() if v is not None or k not in entry})
        args.cache.write_text(json.dumps(cache, indent=1, sort_keys=True))
        marks = " ".join(f"{k}:{'✔' if entry['cells'][k]['ok'] else '✘'}" for k in todo)
        print(f"{model_id} ({result['seconds']} s) {marks}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    if args.out:
        ordered = {m: cache[m] for m in model_ids() if m in cache}
        args.out.write_text(render(ordered))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
