"""Memory: long runs keep a flat footprint, and nothing a call creates outlives it.

* 2,000 consecutive calls of RSP and AE on a tiny model: RSS (``VmRSS`` of /proc/self/status)
  grows by less than 5 % after a warm-up of 100 calls, and the number of live tensors is unchanged.
* Reference counting alone frees every activation a call recorded — also when the call raised —
  so no reference cycle keeps them alive until the next garbage collection; ``gc.collect()`` finds
  no tensor and no relprop object among the unreachable objects a call leaves.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn as nn

import relprop
import relprop.engine.walk as engine_walk
from relprop.methods.propagation import PropagationMethod
from reliability import METHOD_NAMES, construct, single_thread, small_cnn, small_input  # noqa: F401

STATUS = Path("/proc/self/status")
CALLS, WARM_UP = 2000, 100


def rss_bytes() -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def live_tensors() -> int:
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


@pytest.mark.skipif(not STATUS.exists(), reason="RSS is read from Linux's /proc/self/status")
@pytest.mark.parametrize("name", ["rsp", "ae"])
def test_rss_is_flat_over_2000_calls(name):
    method = construct(name, small_cnn())
    x = small_input(1, size=32)  # large enough that leaking one call's activations shows in RSS
    for _ in range(WARM_UP):
        method.attribute(x)
    gc.collect()
    tensors, start = live_tensors(), rss_bytes()
    for _ in range(CALLS):
        method.attribute(x)
    gc.collect()
    growth = (rss_bytes() - start) / start
    assert growth < 0.05, f"RSS grew by {growth:.1%} over {CALLS} calls"
    assert live_tensors() == tensors, "tensors created by the calls are still alive"


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Automatic garbage collection off: only reference counting frees objects."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def watch_module_outputs(model: nn.Module) -> list[weakref.ref]:
    """Weak references to every leaf module output of the next forward passes (via forward hooks)."""
    refs: list[weakref.ref] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        refs.append(weakref.ref(output))

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(keep)
    return refs


def watch_records(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Weak references to each ForwardRecord of the propagation engine and every tensor it holds."""
    refs: list[weakref.ref] = []
    original = engine_walk.record_forward

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        record = original(*args, **kwargs)
        refs.append(weakref.ref(record))
        refs.extend(weakref.ref(t) for t in [*record.values.values(), record.logits, record.seed])
        return record

    monkeypatch.setattr(engine_walk, "record_forward", recording)
    return refs


def _attribute(method, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method.attribute(x)


def _is_propagation(name: str) -> bool:
    return isinstance(construct(name, small_cnn()), PropagationMethod)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_activations_are_freed_by_reference_counting(name, monkeypatch, gc_off):
    model = small_cnn()
    method = construct(name, model)
    x = small_input(2)
    _attribute(method, x)  # first call: lazy imports (whose cycles may hold the calling frames)
    gc.collect()
    outputs = watch_module_outputs(model)
    records = watch_records(monkeypatch) if _is_propagation(name) else []
    result = _attribute(method, x)
    assert outputs and (records or not _is_propagation(name))
    alive = [r() for r in outputs + records if r() is not None and r() is not x]  # x: the caller's
    assert not alive, f"{len(alive)} activation(s) outlive the call (first: {type(alive[0]).__name__})"
    assert result.grad_fn is None and result._base is None
    assert result.untyped_storage().nbytes() == result.numel() * result.element_size(), "result holds a larger buffer"


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if _is_propagation(n)])
def test_activations_are_freed_after_a_call_that_raised(name, monkeypatch, gc_off):
    model = small_cnn()
    method = construct(name, model)
    records = watch_records(monkeypatch)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Boom("boom in the relevance walk")

    monkeypatch.setattr("relprop.engine.standard.maxpool_rule", broken)
    x = small_input(2)
    try:
        _attribute(method, x)
    except Boom:
        pass
    else:
        raise AssertionError("the walk did not reach the max-pooling")
    assert records
    alive = [r() for r in records if r() is not None and r() is not x]
    assert not alive, f"{len(alive)} recorded object(s) outlive the failed call"


def _relprop_garbage(call: Callable[[], object]) -> list[object]:
    """Unreachable objects (found by ``gc.collect()``) that ``call`` leaves: tensors, relprop objects."""
    gc.collect()
    gc.disable()
    try:
        call()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [
            o for o in gc.garbage
            if isinstance(o, torch.Tensor) or type(o).__module__.startswith("relprop")
            or getattr(getattr(o, "f_code", None), "co_filename", "").startswith(str(Path(relprop.__file__).parent))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_reference_cycles_left_for_the_collector(name):
    method = construct(name, small_cnn())
    x = small_input(2)
    _attribute(method, x)  # first call: lazy imports, caches
    garbage = _relprop_garbage(lambda: _attribute(method, x))
    assert not garbage, f"gc.collect() found {len(garbage)} cyclic object(s): {[type(o).__name__ for o in garbage][:5]}"
