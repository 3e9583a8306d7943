"""Snapshot of everything a method must leave untouched on a model."""

from __future__ import annotations

import torch


def snapshot(model: torch.nn.Module) -> dict:
    hooks = {}
    for name, module in model.named_modules():
        hooks[name] = tuple(
            tuple(getattr(module, attr).keys())
            for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                         "_state_dict_hooks", "_load_state_dict_pre_hooks")
        )
    return {
        "params": {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": hooks,
        "global_hooks": (
            len(torch.nn.modules.module._global_forward_hooks),
            len(torch.nn.modules.module._global_forward_pre_hooks),
            len(torch.nn.modules.module._global_backward_hooks),
        ),
    }


def assert_unchanged(before: dict, model: torch.nn.Module) -> None:
    after = snapshot(model)
    assert before["params"].keys() == after["params"].keys()
    for k, (value, flag) in before["params"].items():
        assert torch.equal(value, after["params"][k][0]), f"parameter {k} changed"
        assert flag == after["params"][k][1], f"requires_grad of {k} changed"
    for k, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][k]), f"buffer {k} changed"
    assert before["training"] == after["training"], "training flags changed"
    assert before["hooks"] == after["hooks"], "hooks changed"
    assert before["global_hooks"] == after["global_hooks"], "global hooks changed"
