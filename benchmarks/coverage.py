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
* conserves where the method claims to (float64; ``relprop.coverage.claim_for``, ``PEER_CLAIM``),

and otherwise shows the first check that failed or the error, in one short line.  The checks are
``relprop.coverage.check_methods`` (also behind ``relprop coverage``); this script adds Captum and Zennit, the
model list and the table.  Each model runs in its
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
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from relprop.coverage import INVARIANCE_TOLERANCE, RESOLUTION, Claim, Factory, check_methods, claim_for, relprop_factory

TIMM_MODELS = [
    "resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "ecaresnet50d", "efficientnet_b0",
    "tf_efficientnet_lite0", "mobilenetv3_large_100", "mixnet_s", "ghostnet_100", "regnety_016", "rexnet_100",
    "densenet121", "dla34", "cspresnet50", "hrnet_w18_small", "repvgg_a2", "inception_v3", "vgg16", "convnext_tiny",
]
TIMM_MORE = [
    "skresnet18", "resnest14d", "tresnet_m", "ghostnetv2_100", "dm_nfnet_f0", "res2net50_14w_8s", "dpn68",
    "cspdarknet53", "mobilenetv4_conv_small", "inception_resnet_v2", "poolformer_s12", "poolformerv2_s12",
    "convformer_s18", "fastvit_t8", "repvit_m1", "inception_next_tiny", "hgnetv2_b0", "regnetz_b16",
    "convnextv2_atto", "resnetv2_50x1_bit", "ese_vovnet19b_dw", "selecsls42b", "lcnet_050", "fbnetv3_b", "gernet_s",
    "regnetv_040", "cs3darknet_s", "efficientnetv2_rw_t", "mobileone_s0", "repghostnet_050", "efficientnet_b0_gn",
    "resnetrs50", "rdnet_tiny",
]
"""More timm CNN families, beyond the issue's list: SKNet, ResNeSt, TResNet, GhostNet-v2, NFNet, Res2Net, DPN,
MetaFormer's PoolFormer and ConvFormer, FastViT (without its attention variants), RepViT, ConvNeXt-V2, BiT
(ResNet-v2 with weight standardisation), VoVNet, SelecSLS, LCNet, FBNet-v3, GENet, RegNet-V, CS3-DarkNet,
MobileOne, RepGhostNet, ResNet-RS, RDNet (DenseNet revisited), ..."""
TIMM_ATTENTION = ["edgenext_xx_small", "efficientvit_b0", "gcresnet33ts"]
"""timm CNNs with attention blocks whose class name does not say "Attention": relprop must refuse them too."""
TIMM_TOKEN_MIXERS = ["mixer_s16_224", "resmlp_12_224", "gmlp_ti16_224"]
"""timm models without attention that mix a token sequence with Linear layers: relprop must refuse them too."""
TIMM_OUT_OF_SCOPE = TIMM_ATTENTION + TIMM_TOKEN_MIXERS
TRANSFORMER_FAMILIES = ("vit_", "swin_", "swin3d", "maxvit")
"""torchvision families outside relprop's scope (attention): relprop must refuse them."""
SIZES = (64, 96, 128, 160, 192, 224)
BATCH = 2
METHODS = ["rsp", "ae", "rap", "lrp", "gradcam", "captum_lrp", "zennit"]
TITLES = {
    "rsp": "RSP", "ae": "AE r=2", "rap": "RAP", "lrp": "LRP composite", "gradcam": "Grad-CAM",
    "captum_lrp": "Captum LRP", "zennit": "Zennit EpsilonPlusFlat",
}
LIBRARY = {"rsp": "relprop", "ae": "relprop", "rap": "relprop", "lrp": "relprop", "gradcam": "relprop",
           "captum_lrp": "Captum", "zennit": "Zennit"}
RELPROP = {"rsp": ("rsp", {}), "ae": ("ae", {"ratio": 2.0}), "rap": ("rap", {}), "lrp": ("lrp_composite", {}),
           "gradcam": ("gradcam", {})}
"""benchmark key -> (relprop method name, options)."""
PEER_CLAIM = Claim("logit", tolerance=1e-2, bias_free=True)
"""Captum and Zennit make no exactness claim (ε-stabilised denominators); they are held to 1e-2 of the logit on
the same bias-free copy as relprop's LRP (whose claims are ``relprop.coverage.claim_for``)."""
DEFAULT_CACHE = Path(__file__).with_name("coverage_cache.json")


# ----------------------------------------------------------------------------------------------- models


def model_ids() -> list[str]:
    """``torchvision:<name>`` for every torchvision classifier, then ``timm:<name>`` for the timm list."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision:{n}" for n in sorted(names)] + [f"timm:{n}" for n in TIMM_MODELS + TIMM_MORE + TIMM_OUT_OF_SCOPE]


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


def is_out_of_scope(model_id: str) -> bool:
    """A transformer, a token mixer, or a CNN with attention blocks: relprop refuses it."""
    library, name = model_id.split(":", 1)
    return name.startswith(TRANSFORMER_FAMILIES) if library == "torchvision" else name in TIMM_OUT_OF_SCOPE


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


# ---------------------------------------------------------------------------------------------- methods


def factory(key: str, model_id: str) -> Factory:
    """The :data:`~relprop.coverage.Factory` of benchmark method ``key`` (Captum and Zennit on deep copies:
    they attach rules and canonizers to the model and may not undo them on failure)."""
    if key in RELPROP:
        return relprop_factory(*RELPROP[key])
    if key == "captum_lrp":
        return lambda model, _: _Peer(_captum_lrp(copy.deepcopy(model)))
    if key == "zennit":
        return lambda model, _: _Peer(_zennit(copy.deepcopy(model), model_id))
    raise ValueError(f"unknown method {key!r}; choose from {', '.join(METHODS)}")


def claim(key: str) -> Claim | None:
    return claim_for(*RELPROP[key]) if key in RELPROP else PEER_CLAIM


class _Peer:
    """A peer library's ``(x, targets) -> relevance`` with relprop's ``attribute(x, target=...)``."""

    def __init__(self, explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.explain = explain

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.explain(x, target)


def _captum_lrp(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from captum.attr import LRP

    lrp = LRP(model)
    return lambda x, t: lrp.attribute(x, target=t).detach()


def _zennit(model: nn.Module, model_id: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


# ------------------------------------------------------------------------------------------------ checks


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
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    measurable = _fits_in_memory(model)
    claims = {k: claim(k) for k in methods} if measurable else {}
    checks = check_methods(model, {k: factory(k, model_id) for k in methods}, claims, x)
    cells = {k: {key: value for key, value in dataclasses.asdict(c).items() if key != "method"}
             for k, c in checks.items()}
    for key, cell in cells.items():
        cell["seconds"] = round(cell["seconds"], 2)
        if not measurable and cell["ok"] and claim(key) is not None:
            cell.update(ok=False, note="conservation not measured: no memory for a float64 copy")
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
        ("torchvision CNNs", [m for m in cache if m.startswith("torchvision:") and not is_out_of_scope(m)]),
        ("timm list", [m for m in cache if m.startswith("timm:") and m[5:] in TIMM_MODELS]),
        ("more timm families", [m for m in cache if m.startswith("timm:") and m[5:] in TIMM_MORE]),
        ("transformers, token mixers and CNNs with attention (out of scope)", [m for m in cache if is_out_of_scope(m)]),
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
        "invariant to 1e-4 of max|R| (figures below the tables). Transformers and CNNs with attention blocks",
        "are outside relprop's scope: their relprop cells show the refusal.",
        "",
        "Regenerate with `python benchmarks/coverage.py --out docs/coverage.md` (results are cached in",
        "`benchmarks/coverage_cache.json`; `--rerun failed` recomputes only the cells that are not ✔). The same",
        "checks of relprop's methods on your own models: `relprop coverage --models resnet50,timm:convnext_tiny`,",
        "or `relprop.coverage.check_model(model)` in Python.",
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
    for model_id in sorted(select_models(args.models), key=is_out_of_scope):  # the out-of-scope ones last
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
