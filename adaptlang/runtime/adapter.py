"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small MLP beside a module.

With ``f(h) = up(act(down(dropout(h))))`` (``down``: dim -> size and ``up``:
size -> dim, both with biases), a task weight ``w`` and the site's ``scale``:

=============  ===============================================================
placement      the site computes
=============  ===============================================================
``after``      ``h + w * scale * f(h)`` on the module's output ``h``
               (``residual false``: ``w * scale * f(h)`` replaces ``h``)
``before``     the module applied to ``x + w * scale * f(x)`` (its first input)
               (``residual false``: to ``w * scale * f(x)``)
``parallel``   ``module(x) + w * scale * f(x)``
=============  ===============================================================

``up`` starts at zero, so a fresh adapter (with the residual) changes
nothing. Modules returning tuples (HF attention and decoder layers) are
adapted on element 0. Houlsby's placement is an adapter ``after`` each
attention output projection and ``after`` each MLP; Pfeiffer's is ``after``
the MLP only. Several adapters at one site run in activation order.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.layers import adapter_dtype, describe_layer, filling_values, module_device, module_dtype

__all__ = ["ACTIVATIONS", "PLACEMENTS", "AdapterPart", "build_adapter_part", "map_main_output"]

PLACEMENTS = ("after", "before", "parallel")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class AdapterPart(nn.Module):
    """One bottleneck adapter at one site.

    Args:
        dim: Width of the tensor it adapts.
        size: Bottleneck width.
        placement: ``after``, ``before`` or ``parallel``.
        act: ``relu``, ``gelu``, ``silu`` or ``tanh``.
        dropout: Dropout probability on the adapter's input.
        scale: Multiplies the adapter's output.
        residual: Add the input back (``after``/``before``).
        generator: Seeds ``down``'s initial values.
        device: Where the parameters live.
        dtype: Their dtype.
    """

    kind = "adapter"

    def __init__(self, dim: int, size: int, *, placement: str = "after", act: str = "relu", dropout: float = 0.0,
                 scale: float = 1.0, residual: bool = True, generator: torch.Generator | None = None,
                 device: Any = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if placement not in PLACEMENTS:
            raise RuntimeApplyError(Diagnostic(f"unknown adapter placement '{placement}'",
                                               hint=did_you_mean(placement, PLACEMENTS)))
        if act not in ACTIVATIONS:
            raise RuntimeApplyError(Diagnostic(f"unknown adapter activation '{act}'",
                                               hint=did_you_mean(act, ACTIVATIONS)))
        if int(dim) < 1 or int(size) < 1:
            raise RuntimeApplyError(f"adapter dim and size must be positive, got dim={dim} size={size}")
        self.placement = placement
        self.act_name = act
        self._act = ACTIVATIONS[act]
        self.dropout = float(dropout)
        self.scale = float(scale)
        self.residual = bool(residual) and placement != "parallel"
        factory = {"device": device, "dtype": dtype}
        self.down = nn.Linear(int(dim), int(size), **factory)
        self.up = nn.Linear(int(size), int(dim), **factory)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``down`` as nn.Linear's default (from ``generator``); ``up`` zero."""
        if not filling_values():
            return  # values about to be loaded (deferred_values)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(self.down.in_features)
            self.down.bias.uniform_(-bound, bound, generator=generator)
            self.up.weight.zero_()
            self.up.bias.zero_()

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the parameters by local name (``down.weight``, ``down.bias``, ``up.weight``, ``up.bias``)."""
        return {"down.weight": self.down.weight, "down.bias": self.down.bias,
                "up.weight": self.up.weight, "up.bias": self.up.bias}

    def delta(self, h: torch.Tensor, weight: float, training: bool) -> torch.Tensor:
        """Returns ``w * scale * up(act(down(dropout(h))))`` in ``h``'s dtype: (..., dim)."""
        z = h if h.dtype == self.down.weight.dtype else h.to(self.down.weight.dtype)
        if self.dropout and training:
            z = F.dropout(z, self.dropout, True)
        out = self.up(self._act(self.down(z)))  # (..., dim)
        coef = weight * self.scale
        if coef != 1.0:
            out = out * coef
        return out.to(h.dtype)

    def transform(self, h: torch.Tensor, weight: float, training: bool) -> torch.Tensor:
        """Returns the adapted tensor for ``after``/``before``: ``h + delta`` (or ``delta`` alone)."""
        out = self.delta(h, weight, training)
        return h + out if self.residual else out

    def extra_repr(self) -> str:
        return f"placement={self.placement}, act={self.act_name}, scale={self.scale}, residual={self.residual}"


def map_main_output(output: Any, fn: Any) -> Any:
    """Applies ``fn`` to a module's main output: the tensor, or element 0 of a tuple/list.

    Raises:
        RuntimeApplyError: An output with no tensor in front.
    """
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)((fn(output[0]), *output[1:]))
    raise RuntimeApplyError(f"cannot adapt a module output of type {type(output).__name__}")


def build_adapter_part(base: nn.Module, site: dict[str, Any], generator: torch.Generator | None,
                       device: Any = None) -> AdapterPart:
    """Creates the adapter a plan site describes (``placement``, ``dim``, ``size``, ``act``, ...).

    ``device``: where to create it (default: the base's device).

    Raises:
        RuntimeApplyError: No width, or a parallel adapter on a layer whose input and output widths differ.
    """
    layer = describe_layer(base)
    placement = site.get("placement", "after")
    dim = site.get("dim")
    if dim is None:
        dim = layer.in_features if placement == "before" else layer.out_features
    if dim is None:
        raise RuntimeApplyError(f"the adapter needs a width ('dim') for this {type(base).__name__}")
    if placement == "parallel" and layer.kind is not None and layer.in_features != layer.out_features:
        raise RuntimeApplyError(Diagnostic(
            f"a parallel adapter needs equal input and output widths; this {type(base).__name__} maps "
            f"{layer.in_features} -> {layer.out_features}", hint="place it 'after' or 'before' instead"))
    return AdapterPart(
        int(dim), int(site["size"]), placement=placement, act=site.get("act", "relu"),
        dropout=float(site.get("dropout", 0.0)), scale=float(site.get("scale", 1.0)),
        residual=bool(site.get("residual", True)), generator=generator,
        device=module_device(base) if device is None else device, dtype=adapter_dtype(module_dtype(base)))
