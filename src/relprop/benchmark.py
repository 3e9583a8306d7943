"""Speed and memory of RSP / AE against a plain gradient and other LRP libraries.

Every method is timed on the same model, batch and device in one run (after a warm-up call,
median of ``repeats`` calls) and reported as seconds per image and as a ratio to the plain
gradient of the target logits w.r.t. the input.  Peak memory is measured in a fresh subprocess per
configuration: the growth of the peak resident set size (VmHWM, reset after loading the model
and the input) over the resident size at that point (CPU), or ``torch.cuda.max_memory_allocated`` above the allocation before the call (GPU).
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from .progress import Progress

Explain = Callable[[torch.Tensor, torch.Tensor], object]

MODELS = ("vgg16", "resnet50", "densenet121", "efficientnet_lite0")
METHODS = ("forward", "gradient", "rsp", "ae", "lrp_epsilon", "captum_lrp", "zennit_epsilon_plus_flat")


@dataclass
class Measurement:
    model: str
    batch: int
    method: str
    device: str
    seconds_per_image: float | None = None
    ratio_to_gradient: float | None = None
    peak_memory_mb: float | None = None
    note: str = ""


def build_model(name: str, device: str) -> nn.Module:
    """Model ``name`` as ``--model`` names it (torchvision, ``timm:<name>``), with random weights (seed 0);
    EfficientNet-Lite0 gets its pretrained weights when installed."""
    from .zoo import load_model

    torch.manual_seed(0)
    model, _ = load_model(name)
    return model.eval().to(device)


def make_method(name: str, model: nn.Module) -> Explain:
    """A callable ``(x, target) -> attribution`` for method ``name`` (ImportError if unavailable)."""
    if name == "forward":
        def forward(x, target):
            with torch.no_grad():
                return model(x)
        return forward
    if name == "gradient":
        def gradient(x, target):
            x = x.detach().requires_grad_(True)
            logits = model(x)
            return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)[0]
        return gradient
    if name in ("captum_lrp", "zennit_epsilon_plus_flat"):
        # Other libraries get their own copy: a canonizer that fails half-way (Zennit on
        # DenseNet) can leave the model it was given altered.
        model = copy.deepcopy(model)
    if name == "captum_lrp":
        from captum.attr import LRP

        lrp = LRP(model)
        return lambda x, target: lrp.attribute(x, target=target)
    if name == "zennit_epsilon_plus_flat":
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat

        composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])

        def zennit(x, target):
            with Gradient(model=model, composite=composite) as attributor:
                logits = model(x)
                one_hot = torch.zeros_like(logits).scatter_(1, target[:, None], 1.0)
                return attributor(x, one_hot)[1]
        return zennit
    from .registry import get_method

    method_name, _, mode = name.partition(":")
    kwargs = {"mode": mode} if mode else {}
    method = get_method(method_name)(model, **kwargs)
    return lambda x, target: method.attribute(x, target=target)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(fn: Explain, x: torch.Tensor, target: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call, in seconds."""
    device = str(x.device)
    fn(x, target)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x, target)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 224, 224, generator=generator).to(device)
    target = torch.arange(batch, device=device) * 7 % 1000
    return x, target


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux ≥ 4.0), so earlier peaks do not count."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def memory_probe(model_name: str, batch: int, method: str, device: str) -> float:
    """Peak memory growth (MB) of one call, in this (fresh) process."""
    model = build_model(model_name, device)
    fn = make_method(method, model)
    x, target = _inputs(batch, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x, target)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _reset_peak_rss()
    base = _status_mb("VmRSS")
    fn(x, target)
    return _status_mb("VmHWM") - base


def _memory_in_subprocess(model: str, batch: int, method: str, device: str) -> float | None:
    code = (
        "import sys, torch; from relprop.benchmark import memory_probe; "
        f"torch.set_num_threads({torch.get_num_threads()}); "
        f"print(memory_probe({model!r}, {batch}, {method!r}, {device!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def run(
    models: tuple[str, ...] = MODELS,
    batches: tuple[int, ...] = (1, 16),
    methods: tuple[str, ...] = METHODS,
    device: str = "cpu",
    repeats: int = 5,
    memory: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> list[Measurement]:
    """Measure every (model, batch, method); the gradient is always measured first as the baseline.

    ``log`` gets each result row as it is measured; ``progress`` announces every step on stderr.
    """
    results: list[Measurement] = []
    ordered = ("gradient",) + tuple(m for m in methods if m != "gradient")
    steps = Progress("bench", len(models) * len(batches) * len(ordered), enabled=progress)
    measured = f"1 warm-up + {repeats} timed call(s)" + (", then peak memory in a subprocess" if memory else "")
    for model_name in models:
        steps.note(f"building {model_name}")
        model = build_model(model_name, device)
        for batch in batches:
            x, target = _inputs(batch, device)
            baseline = None
            for method in ordered:
                steps.step(f"{model_name}, batch {batch}, {method}: {measured}")
                row = Measurement(model_name, batch, method, device)
                try:
                    fn = make_method(method, model)
                    seconds = time_method(fn, x, target, repeats)
                except Exception as exc:  # a library that cannot run this model is reported, not fatal
                    row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                else:
                    row.seconds_per_image = seconds / batch
                    baseline = baseline or seconds
                    row.ratio_to_gradient = seconds / baseline
                    if memory:
                        row.peak_memory_mb = _memory_in_subprocess(model_name, batch, method, device)
                results.append(row)
                log(_format_row(row))
    return results


def _format_row(r: Measurement) -> str:
    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    return (
        f"| {r.model} | {r.batch} | {r.method} | {fmt(r.seconds_per_image, '.4f')} | "
        f"{fmt(r.ratio_to_gradient, '.2f')} | {fmt(r.peak_memory_mb, '.0f')} | {r.note} |"
    )


def to_markdown(results: list[Measurement]) -> str:
    head = (
        "| model | batch | method | s / image | × gradient | peak memory (MB) | note |\n"
        "|---|---:|---|---:|---:|---:|---|"
    )
    return "\n".join([head] + [_format_row(r) for r in results])


def environment() -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def save(results: list[Measurement], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "benchmark.json", out / "benchmark.md"
    json_path.write_text(json.dumps({"environment": environment(), "results": [asdict(r) for r in results]}, indent=2))
    md_path.write_text(to_markdown(results) + "\n")
    return json_path, md_path
