"""(IA)^3: a learned vector rescaling a module's output, or its input (``feedforward``).

As PEFT's ``IA3Layer``: one vector ``ia3_l``, ones-initialised, multiplies
the output features (``y * v``) or, for ``feedforward`` sites, the input
features before the module (``module(x * v)``). Several IA3 deltas on one
side of a site multiply (PEFT: ``ia3_scaling *= ...``).

A task weight ``w`` scales the *change* the vector makes: the factor used is
``1 + w * (v - 1)``. So ``w = 1`` is the vector itself, ``w = 0`` is no
change, a fresh (ones) vector changes nothing at any weight, and weights of a
repeated delta, which the task algebra already adds, stay additive in the
change. (``v ** w`` would also leave ones alone, but is undefined for
negative entries.)

Merging multiplies the weight's rows (output side, and the bias) or columns
(input side) by the factor (:mod:`adaptlang.runtime.merging`); unmerging puts
back the kept original weights, bit for bit. Only ``merge(keep="none")``
divides instead, which is exact only within rounding and impossible where a
factor entry is zero, so there a factor with a zero refuses to merge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.layers import EMBEDDING, adapter_dtype, describe_layer, module_device, module_dtype

__all__ = ["IA3Part", "build_ia3_part", "combined_factor"]

INITS = ("ones",)


class IA3Part(nn.Module):
    """One IA3 delta at one site.

    Args:
        features: Length of the vector (output width, or input width with ``feedforward``).
        feedforward: Scale the input instead of the output.
        init: ``ones`` (the only init: a fresh delta changes nothing).
        device: Where the vector lives.
        dtype: Its dtype.
    """

    kind = "ia3"

    def __init__(self, features: int, *, feedforward: bool = False, init: str = "ones", device: Any = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if init not in INITS:
            raise RuntimeApplyError(f"unknown IA3 init '{init}' (one of {', '.join(INITS)})")
        self.feedforward = bool(feedforward)
        self.ia3_l = nn.Parameter(torch.ones(int(features), device=device, dtype=dtype))  # (n,)

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the delta's parameters by local name (``ia3_l``: (n,))."""
        return {"ia3_l": self.ia3_l}

    def factor(self, weight: float) -> torch.Tensor:
        """Returns the factor ``1 + w (v - 1)`` (n,); the vector itself when ``w == 1``."""
        if weight == 1.0:
            return self.ia3_l
        return 1.0 + weight * (self.ia3_l - 1.0)


def combined_factor(entries: list[tuple[IA3Part, float]]) -> torch.Tensor:
    """Returns the product of the factors of several IA3 deltas on one side of a site (n,)."""
    factor = entries[0][0].factor(entries[0][1])
    for part, weight in entries[1:]:
        factor = factor * part.factor(weight)
    return factor


def build_ia3_part(base: nn.Module, site: dict[str, Any], device: Any = None) -> IA3Part:
    """Creates the IA3 part a plan site describes.

    Args:
        base: The original module.
        site: The plan site (``feedforward``, ``init``, ``in_features``, ``out_features``).
        device: Where to create the part (default: the base's device).

    Raises:
        RuntimeApplyError: No width known for the scaled side, or input scaling on an Embedding.
    """
    layer = describe_layer(base)
    feedforward = bool(site.get("feedforward", False))
    if feedforward and layer.kind == EMBEDDING:
        raise RuntimeApplyError(Diagnostic(
            "IA3 with 'feedforward' scales a module's input features; an Embedding's input is token ids",
            hint="drop 'feedforward' to scale the embedding's output"))
    key = "in_features" if feedforward else "out_features"
    have = getattr(layer, key)
    want = site.get(key)
    if want is not None and have is not None and int(want) != have:
        raise RuntimeApplyError(f"the plan says {key}={want}, the {type(base).__name__} has {have}")
    features = want if want is not None else have
    if features is None:
        raise RuntimeApplyError(f"IA3 needs the {key} of this {type(base).__name__}; the plan gives none")
    return IA3Part(int(features), feedforward=feedforward, init=site.get("init", "ones"),
                   device=module_device(base) if device is None else device,
                   dtype=adapter_dtype(module_dtype(base)))
