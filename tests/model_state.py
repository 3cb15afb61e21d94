"""Exact model state: what "the model exactly as before" means in tests.

Same module objects and types at every path, the same parameter objects with
the same ``requires_grad`` flags, bit-identical state-dict values, the same
hooks and the same attribute names. Used after ``remove()``, after a failed
apply and after a failed bundle load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModelState", "assert_same_state", "capture_state"]

_HOOK_TABLES = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)


@dataclass
class ModelState:
    """Everything that must be identical after ``remove()`` or a failed apply."""

    modules: dict[str, nn.Module]
    types: dict[str, type]
    params: dict[str, nn.Parameter]
    flags: dict[str, bool]
    values: dict[str, torch.Tensor]
    hooks: dict[str, tuple[int, ...]]
    attrs: dict[str, frozenset[str]]


def capture_state(model: nn.Module) -> ModelState:
    """Records a model's module/parameter objects, values, flags, hooks and attributes."""
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    return ModelState(
        modules=modules,
        types={k: type(m) for k, m in modules.items()},
        params=params,
        flags={k: p.requires_grad for k, p in params.items()},
        values={k: v.detach().clone() for k, v in model.state_dict().items()},
        hooks={k: tuple(len(getattr(m, t)) for t in _HOOK_TABLES) for k, m in modules.items()},
        attrs={k: frozenset(m.__dict__) for k, m in modules.items()},
    )


def assert_same_state(model: nn.Module, before: ModelState) -> None:
    """Asserts ``model`` is exactly as ``before`` recorded (objects, values, flags, hooks)."""
    after = capture_state(model)
    assert list(after.modules) == list(before.modules)
    for path, module in before.modules.items():
        assert after.modules[path] is module, f"module object at '{path}' changed"
        assert after.types[path] is before.types[path]
    assert list(after.params) == list(before.params)
    for name, param in before.params.items():
        assert after.params[name] is param, f"parameter object '{name}' changed"
        assert after.flags[name] == before.flags[name], f"requires_grad of '{name}' changed"
    assert list(after.values) == list(before.values)
    for key, value in before.values.items():
        now = after.values[key]
        assert now.dtype == value.dtype and now.shape == value.shape, key
        assert torch.equal(now, value), f"value of '{key}' changed"
    assert after.hooks == before.hooks
    assert after.attrs == before.attrs
