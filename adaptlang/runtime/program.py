"""A site's forward, precomputed: which parts run, grouped and ordered, at ``set_active`` time.

:class:`Program` sorts the active ``(part, weight)`` pairs of a site into the
stages of the site forward (see :mod:`adaptlang.runtime.site`), groups the
plain LoRA parts by dropout into concatenated products
(:class:`~adaptlang.runtime.lora.LoRAGroup`), and picks a mode: the forward
of a site with nothing active is the base's, and a site with plain LoRA only
skips everything but ``base(x)`` and the products.

Zero-weight parts whose contribution is additive are left out (they add
nothing); an ``after``/``before`` adapter without residual is kept (at
weight 0 it replaces its input by zeros, as written).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from adaptlang.runtime.adapter import map_main_output
from adaptlang.runtime.ia3 import combined_factor
from adaptlang.runtime.layers import EMBEDDING, describe_layer, first_input, out_in_view, replace_first_input, run_layer
from adaptlang.runtime.lora import LoRAGroup

__all__ = [
    "BASE_ONLY", "FULL", "LORA_ONLY", "Program", "dora_terms", "effective_tensors", "output_is_private", "run_base",
    "run_program",
]

BASE_ONLY = "base"
LORA_ONLY = "lora"
FULL = "full"


class Program:
    """The precomputed forward of one site for one activation.

    Attributes:
        mode: :data:`BASE_ONLY`, :data:`LORA_ONLY` or :data:`FULL`.
        base: The original module.
        kind: Its layer kind (``linear``, ``conv1d``, ``embedding`` or None).
        groups: Concatenated plain-LoRA products, one per dropout probability.
        dora: ``(part, weight)`` of DoRA parts.
        ia3_in, ia3_out: ``(part, weight)`` of IA3 parts on each side.
        sparse: ``(part, weight)`` of sparse parts.
        before, parallel, after: ``(part, weight)`` of adapters, in activation order.
        quant: The quantized base weight, or None.
        override: The base is run with substituted tensors (quantized or sparse).
        fusable: One LoRA product on an ``nn.Linear``: the base call and the product may fuse.
    """

    __slots__ = ("mode", "base", "kind", "groups", "dora", "ia3_in", "ia3_out", "sparse", "before",
                 "parallel", "after", "quant", "override", "first_input", "fusable")

    def __init__(self) -> None:
        self.first_input = first_input

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], training: bool) -> Any:
        """The full forward (:func:`run_program`)."""
        return run_program(self, args, kwargs, training)

    def drop_caches(self) -> None:
        """Frees the groups' concatenated factors (the site switched to another program)."""
        for group in self.groups:
            group.cache.clear()

    @classmethod
    def build(cls, base: nn.Module, entries: list[tuple[nn.Module, float]], quant: Any) -> "Program":
        """Sorts ``(part, weight)`` pairs (activation order) into a program for ``base``."""
        prog = cls()
        prog.base, prog.kind, prog.quant = base, describe_layer(base).kind, quant
        plain: dict[float, list[tuple[nn.Module, float]]] = {}
        prog.dora, prog.ia3_in, prog.ia3_out, prog.sparse = [], [], [], []
        prog.before, prog.parallel, prog.after = [], [], []
        for part, weight in entries:
            if weight == 0.0 and not (part.kind == "adapter" and not part.residual):
                continue
            if part.kind == "lora":
                if part.dora:
                    prog.dora.append((part, weight))
                else:
                    plain.setdefault(part.dropout, []).append((part, weight))
            elif part.kind == "ia3":
                (prog.ia3_in if part.feedforward else prog.ia3_out).append((part, weight))
            elif part.kind == "sparse":
                prog.sparse.append((part, weight))
            else:
                getattr(prog, part.placement).append((part, weight))
        prog.groups = [LoRAGroup(group, base) for group in plain.values()]
        prog.override = quant is not None or bool(prog.sparse)
        others = (prog.dora or prog.ia3_in or prog.ia3_out or prog.before or prog.parallel or prog.after
                  or prog.override)
        prog.mode = FULL if others else (LORA_ONLY if prog.groups else BASE_ONLY)
        # One product on exactly nn.Linear: the site may run it fused (runtime.fused); hooks are checked per call.
        prog.fusable = prog.mode is LORA_ONLY and len(prog.groups) == 1 and type(base) is nn.Linear
        return prog


def output_is_private(base: nn.Module) -> bool:
    """True when no forward hook (the module's or a global one) may keep the base's output.

    Why: the LoRA product is then added into that fresh output in place.
    """
    return not base._forward_hooks and not _torch_module._global_forward_hooks


def effective_tensors(base: nn.Module, quant: Any, sparse: list[tuple[Any, float]]) -> dict[str, torch.Tensor]:
    """Returns the base parameters to use instead of the stored ones (dequantized, plus sparse deltas)."""
    tensors: dict[str, torch.Tensor] = {}
    if quant is not None:
        tensors["weight"] = quant.dequantize()
    for part, weight in sparse:
        current = tensors.get(part.param)
        if current is None:
            current = base._parameters[part.param]
        tensors[part.param] = part.apply_to(current, weight)
    return tensors


def run_base(prog: Program, args: tuple[Any, ...], kwargs: dict[str, Any],
              tensors: dict[str, torch.Tensor] | None) -> Any:
    """Runs the base module, with substituted tensors when the program overrides them."""
    if tensors is None:
        return prog.base(*args, **kwargs)
    base = prog.base
    if prog.kind is None:
        return torch.func.functional_call(base, tensors, args, kwargs)
    x = first_input(args, kwargs)
    weight = tensors["weight"] if "weight" in tensors else base._parameters["weight"]
    bias = tensors["bias"] if "bias" in tensors else base._parameters.get("bias")
    if prog.kind == EMBEDDING:
        return run_layer(prog.kind, base, x, weight, bias)
    out_dtype = x.dtype
    if x.dtype != weight.dtype:  # a quantized base computes in its compute dtype (QLoRA)
        x = x.to(weight.dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    return run_layer(prog.kind, base, x, weight, bias).to(out_dtype)


def run_program(prog: Program, args: tuple[Any, ...], kwargs: dict[str, Any], training: bool) -> Any:
    """The full site forward (see :mod:`adaptlang.runtime.site`).

    Args:
        prog: The site's program.
        args, kwargs: The call's arguments (the main input first or by keyword).
        training: Whether dropout is on.
    """
    if prog.before:
        x = first_input(args, kwargs)
        for part, weight in prog.before:
            x = part.transform(x, weight, training)
        args, kwargs = replace_first_input(args, kwargs, x)
    xb = first_input(args, kwargs) if (prog.parallel or prog.ia3_in or prog.groups or prog.dora) else None
    x = xb
    if prog.ia3_in:
        factor = combined_factor(prog.ia3_in)
        x = (xb.to(factor.dtype) * factor).to(xb.dtype)
        args, kwargs = replace_first_input(args, kwargs, x)
    tensors = effective_tensors(prog.base, prog.quant, prog.sparse) if prog.override else None
    y = run_base(prog, args, kwargs, tensors)
    if not (prog.groups or prog.dora or prog.ia3_out or prog.parallel or prog.after):
        return y

    # In place only into a fresh layer output that DoRA does not need afterwards.
    inplace = prog.kind is not None and not prog.dora and (tensors is not None or output_is_private(prog.base))

    def adapt(h: torch.Tensor) -> torch.Tensor:
        base_out = h
        for group in prog.groups:
            h = group.add_to(h, x, training, inplace)
        if prog.dora:
            for term, w in dora_terms(prog, base_out, x, tensors, training):
                h = h + (term if w == 1.0 else term * w).to(h.dtype)
        if prog.ia3_out:
            factor = combined_factor(prog.ia3_out)
            h = (h.to(factor.dtype) * factor).to(h.dtype)
        for part, weight in prog.parallel:
            h = h + part.delta(xb, weight, training)
        for part, weight in prog.after:
            h = part.transform(h, weight, training)
        return h

    return map_main_output(y, adapt)


def dora_terms(prog: Any, base_out: torch.Tensor, x: torch.Tensor, tensors: dict[str, torch.Tensor] | None,
               training: bool) -> list[tuple[torch.Tensor, Any]]:
    """Returns ``(term, weight)`` for every DoRA part of ``prog.dora``, in the parts' dtype.

    Each term is computed against the base output ``base_out`` and the weight
    in use (dequantized, plus sparse deltas), as PEFT's DoRA layer does.
    """
    base = prog.base
    weight = tensors.get("weight") if tensors else None
    if weight is None:
        weight = base._parameters["weight"]
    bias = tensors.get("bias") if tensors else None
    if bias is None:
        bias = base._parameters.get("bias")
    dtype = prog.dora[0][0].lora_A.dtype
    weight_oi = out_in_view(prog.kind, weight).to(dtype)
    xin = x if prog.kind == EMBEDDING else x.to(dtype)
    base_out = base_out.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    return [(part.dora_term(xin, base_out, weight_oi, base, bias, training), w) for part, w in prog.dora]
