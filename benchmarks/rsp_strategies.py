"""Time the three exact ways of computing RSP's hidden-convolution rule on a model's layer shapes.

    python benchmarks/rsp_strategies.py --model resnet50 --batch 8 [--device cuda]

For every distinct convolution shape of the model (except the one reading the image) it prints the
median time of ``"virtual kernels"`` (per-sample grouped convolutions), ``"unfolded"`` (batched matrix
products) and ``"gram"`` (receptive-field Gram matrix), which one ``relprop`` picks, and the model
totals.  All three give the same numbers (tests/test_rule_strategies.py); only their cost differs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from functools import partial

import torch
import torch.nn as nn

from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.rsp import _contrast_by_virtual_kernels, _contrast_unfolded, _split_by_sign, _strategy
from relprop.benchmark import build_model


def conv_shapes(model: nn.Module, size: int) -> Counter:
    """(C, H, W, O, kh, kw, stride, padding, dilation, groups) of every hidden Conv2d, with counts."""
    shapes: Counter = Counter()

    def record(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        c, h, w = inputs[0].shape[1:]
        if c != 3 and isinstance(module.padding, tuple):
            shapes[(c, h, w, module.out_channels, *module.kernel_size, tuple(module.stride), tuple(module.padding),
                    tuple(module.dilation), module.groups)] += 1

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def timed(fn, repeats: int, sync) -> float:  # type: ignore[no-untyped-def]
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    shapes = conv_shapes(build_model(args.model, "cpu").eval(), 224)
    totals: Counter = Counter()
    print("| C×H×W | O, kernel, stride | count | virtual kernels (ms) | unfolded (ms) | gram (ms) | picked |")
    print("|---|---|---:|---:|---:|---:|---|")
    for (c, h, w, o, kh, kw, stride, padding, dilation, groups), count in shapes.items():
        geometry = ConvGeometry(stride, padding, dilation, groups)
        x = torch.rand(args.batch, c, h, w, device=device)
        relevance = geometry.conv(x, torch.randn(o, c // groups, kh, kw, device=device))
        both = _split_by_sign(relevance, groups)
        positions, d = relevance[0, 0].numel(), c // groups * kh * kw
        candidates = {
            "virtual kernels": partial(_contrast_by_virtual_kernels, x, geometry=geometry, kernel_shape=(o, c // groups, kh, kw))
        }
        if groups == 1:
            candidates["unfolded"] = partial(_contrast_unfolded, x, geometry=geometry, kernel_size=(kh, kw), gram=False)
            if positions * positions <= 1 << 24:  # the Gram matrix of a large map does not fit memory (and is never picked)
                candidates["gram"] = partial(_contrast_unfolded, x, geometry=geometry, kernel_size=(kh, kw), gram=True)
        row = {}
        for name, fn in candidates.items():  # each call overwrites its relevance, so it gets a copy (timed too)
            row[name] = timed(lambda fn=fn, both=both: fn(both=both.clone()), args.repeats, sync) * 1e3
            totals[name] += row[name] * count
        picked = _strategy(device, groups, o, positions, d, geometry.is_pointwise((kh, kw)))
        totals["picked"] += row[picked] * count
        totals["best"] += min(row.values()) * count
        cells = " | ".join(f"{row[n]:.1f}" if n in row else "-" for n in ("virtual kernels", "unfolded", "gram"))
        print(f"| {c}×{h}×{w} | {o}, {kh}×{kw}, {stride[0]} | {count} | {cells} | {picked} |", flush=True)
    print(f"\n{args.model}, batch {args.batch}, {device}: totals (ms) " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
