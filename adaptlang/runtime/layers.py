"""What the weight-level deltas need to know about a site's base module.

LoRA, IA3 (when merged), sparse deltas on ``weight`` and quantization act on
a 2-D weight. Three layer kinds hold one, in different layouts:

=============  ====================  ======================  ==================
kind           weight                ``(in, out)`` features   out x in view
=============  ====================  ======================  ==================
``linear``     (out, in)             in, out                  ``weight``
``conv1d``     (in, out) (GPT-2)     in, out                  ``weight.t()``
``embedding``  (num, dim)            num, dim                 ``weight.t()``
=============  ====================  ======================  ==================

Everything here works on the *out x in* view, so one formula serves all
three: a LoRA delta is ``B @ A`` (out, in), IA3 scales rows (outputs) or
columns (inputs), DoRA's norm runs over each row. The view shares storage
with the parameter, so in-place merges through it change the real weight.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CONV1D", "EMBEDDING", "LINEAR", "LayerInfo", "adapter_dtype", "deferred_values", "describe_layer",
    "filling_values", "first_input",
    "module_device", "module_dtype", "out_in_view", "replace_first_input", "run_layer",
]

LINEAR = "linear"
CONV1D = "conv1d"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class LayerInfo:
    """A base module as the weight-level deltas see it.

    Attributes:
        kind: ``linear``, ``conv1d``, ``embedding``, or None for any other module.
        in_features: Input width (Embedding: vocabulary size), None if unknown.
        out_features: Output width, None if unknown.
    """

    kind: str | None
    in_features: int | None
    out_features: int | None


@functools.lru_cache(maxsize=1)
def _conv1d_class() -> type | None:
    """Returns transformers' GPT-2 ``Conv1D`` class, or None without transformers (looked up once)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # noqa: BLE001 - transformers is optional at this layer
        return None
    return Conv1D


def describe_layer(module: nn.Module) -> LayerInfo:
    """Returns the layer kind and feature widths of ``module``.

    Args:
        module: The original (unwrapped) module.
    """
    if isinstance(module, nn.Linear):
        return LayerInfo(LINEAR, module.in_features, module.out_features)
    if isinstance(module, nn.Embedding):
        return LayerInfo(EMBEDDING, module.num_embeddings, module.embedding_dim)
    conv1d = _conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        n_in, n_out = module.weight.shape
        return LayerInfo(CONV1D, int(n_in), int(n_out))
    return LayerInfo(None, None, None)


def out_in_view(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """Returns ``weight`` seen as (out, in): a view sharing its storage."""
    return weight if kind == LINEAR else weight.t()


def from_out_in(kind: str, weight_oi: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`out_in_view`: an (out, in) tensor in the layer's own layout."""
    return weight_oi if kind == LINEAR else weight_oi.t()


def run_layer(kind: str, module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
    """Computes the layer's forward with a given weight (in the layer's own layout).

    Used where the module's stored weight is not the one to use: a quantized
    base (dequantized on the fly) or a sparse delta added functionally.

    Args:
        kind: The layer kind.
        module: The original module (Embedding options are read from it).
        x: Input (``(..., in)``; Embedding: ids).
        weight: The weight to use, in the layer's layout.
        bias: The bias to use (None for none).
    """
    if kind == LINEAR:
        return F.linear(x, weight, bias)
    if kind == CONV1D:
        size_out = x.shape[:-1] + (weight.shape[1],)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        y = torch.addmm(bias, x2, weight) if bias is not None else x2 @ weight
        return y.view(size_out)
    return F.embedding(x, weight, module.padding_idx, module.max_norm, module.norm_type,
                       module.scale_grad_by_freq, module.sparse)


def module_device(module: nn.Module) -> torch.device:
    """Returns the device of a module's first parameter or buffer (CPU for none)."""
    weight = module._parameters.get("weight")
    if weight is not None:  # the common case, without walking the module tree
        return weight.device
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """Returns the dtype of a module's first floating parameter (float32 for none)."""
    weight = module._parameters.get("weight")
    if weight is not None and weight.is_floating_point():
        return weight.dtype
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Returns the dtype delta parameters are kept in: fp32 (fp64 for an fp64 base).

    Why: as PEFT does (``autocast_adapter_dtype``), half-precision bases get
    fp32 adapters so small updates are not rounded away; the plan's memory
    estimate assumes fp32 too.
    """
    return torch.float64 if base_dtype == torch.float64 else torch.float32


#: Keyword names HF modules use for their main input, when it is not positional.
_INPUT_KEYS = ("hidden_states", "input", "x", "input_ids", "inputs_embeds")


def _first_key(kwargs: dict[str, Any]) -> str:
    """Names the keyword argument that carries a module's main input."""
    for key in _INPUT_KEYS:
        if kwargs.get(key) is not None:
            return key
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return key
    raise TypeError("the module was called without a tensor input")


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Returns a module call's main input: the first positional argument, else a known keyword."""
    if args:
        return args[0]
    return kwargs[_first_key(kwargs)]


def replace_first_input(args: tuple[Any, ...], kwargs: dict[str, Any],
                        value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Returns ``(args, kwargs)`` with the main input replaced by ``value`` (inputs not mutated)."""
    if args:
        return (value,) + tuple(args[1:]), kwargs
    key = _first_key(kwargs)
    return args, {**kwargs, key: value}


_DEFER = contextvars.ContextVar("adaptlang_defer_values", default=False)


@contextlib.contextmanager
def deferred_values() -> Any:
    """Within it, new LoRA and adapter parts skip their initial values (memory as allocated).

    For callers that overwrite every value right away, such as loading a
    bundle: drawing random initial values for millions of entries that are
    then replaced costs a quarter of a 7B load. DoRA magnitudes are not
    computed either. Other kinds (IA3, sparse, prompts) initialise as usual.
    """
    token = _DEFER.set(True)
    try:
        yield
    finally:
        _DEFER.reset(token)


def filling_values() -> bool:
    """False inside :func:`deferred_values`."""
    return not _DEFER.get()
