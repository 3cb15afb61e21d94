"""The LoRA hot path on a plain ``nn.Linear``: the base product and the low-rank one, fused.

A site whose only active deltas are plain LoRA parts (one dropout group) on
an unhooked ``nn.Linear`` computes ``y = x W^T + b + alpha * (x A^T) B^T``
here, without calling the base module:

* inference (no gradient needed): ``F.linear``, one ``mm`` for ``x A^T``
  and one ``addmm_`` that adds the low-rank product into the fresh output;
* training: :class:`FusedLoRALinear`, an autograd function with the same
  forward whose backward writes ``dL/dx = g W + (alpha g B) A`` with one
  ``addmm_`` into one buffer. Autograd on the unfused ops would either copy
  the whole output gradient twice per site (``CopySlices``, for the in-place
  sum) or allocate and add a second ``dL/dx`` (out of place, as PEFT does).

Why bypass the module call: it is the same ``F.linear`` the module runs, and
is only done when nothing could observe the difference (no hooks on the
module, none global, exactly ``nn.Linear``); :func:`plain_linear` checks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

__all__ = ["FusedLoRALinear", "FactorCache", "lora_linear_infer", "lora_linear_train", "needs_grad", "plain_linear"]


def plain_linear(base: nn.Module) -> bool:
    """True when ``base`` is exactly ``nn.Linear`` and no hook may watch its call.

    Why: only then is ``F.linear(x, base.weight, base.bias)`` indistinguishable
    from ``base(x)`` (subclasses may override ``forward``; hooks expect a call).
    """
    return (type(base) is nn.Linear and not base._forward_hooks and not base._forward_pre_hooks
            and not base._backward_hooks and not base._backward_pre_hooks
            and not _torch_module._global_forward_hooks and not _torch_module._global_forward_pre_hooks
            and not _torch_module._global_backward_hooks and not _torch_module._global_backward_pre_hooks)


class FusedLoRALinear(torch.autograd.Function):
    """``y = x W^T + b + alpha (x_d A^T) B^T`` with a fused backward (module docstring).

    ``x_d`` is the LoRA input (``x`` after dropout), or None when it is ``x``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, alpha: float, x_d: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, in)
        xd2 = x2 if x_d is None else x_d.reshape(-1, shape[-1])  # (N, in)
        y = F.linear(x, weight, bias)  # (..., out), fresh and contiguous
        xa = torch.mm(xd2, a.t())  # (N, R)
        y.view(-1, y.shape[-1]).addmm_(xa, b.t(), alpha=alpha)
        ctx.alpha = alpha
        ctx.shape = shape
        ctx.has_xd = x_d is not None
        ctx.save_for_backward(x2, xd2 if x_d is not None else None, xa, weight, a, b)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x2, xd2, xa, weight, a, b = ctx.saved_tensors
        if xd2 is None:
            xd2 = x2
        need_x, need_w, need_bias, need_a, need_b, _, need_xd = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        gx = gw = gbias = ga = gb = gxd = None
        gxa = None
        if need_a or need_x or need_xd:
            gxa = torch.mm(g2, b)  # (N, R)
            gxa.mul_(ctx.alpha)
        if need_x:
            gx = torch.mm(g2, weight)  # (N, in)
            if not ctx.has_xd:
                gx.addmm_(gxa, a)  # the low-rank path's share, in the same buffer
            gx = gx.view(ctx.shape)
        if need_xd and ctx.has_xd:
            gxd = torch.mm(gxa, a).view(ctx.shape)  # (N, in): flows back through the dropout
        if need_w:
            gw = torch.mm(g2.t(), x2)  # (out, in)
        if need_bias:
            gbias = g2.sum(0)
        if need_a:
            ga = torch.mm(gxa.t(), xd2)  # (R, in)
        if need_b:
            gb = torch.mm(g2.t(), xa)  # (out, R)
            gb.mul_(ctx.alpha)
        return gx, gw, gbias, ga, gb, None, gxd


class FactorCache:
    """A stacked group's concatenated factors, kept while the parts' factors are unchanged.

    Why: two or more LoRA parts at a site run as one product over
    ``cat(A_i)`` and ``cat(c_i B_i)``; in inference the factors do not change
    between calls, so the concatenation is made once. A factor's version
    counter and storage (bumped by every in-place write: optimiser steps,
    ``copy_``, loading) tell when to remake it. Only used where no gradient is
    recorded; a single part's factors are used as they are.
    """

    __slots__ = ("key", "a", "b")

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None

    def get(self, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``group.factors()`` (a :class:`~adaptlang.runtime.lora.LoRAGroup`): (R, in), (out, R)."""
        if len(group.As) == 1:
            return group.As[0], group.Bs[0]
        key = tuple((t._version, t.data_ptr()) for t in group.As + group.Bs)
        if key != self.key:
            self.a, self.b = group.factors()
            self.key = key
        return self.a, self.b  # type: ignore[return-value]

    def clear(self) -> None:
        """Forgets the copies (the site switched to another task: no memory held for this one)."""
        self.key = self.a = self.b = None


def needs_grad(x: torch.Tensor, base: nn.Linear, group: Any) -> bool:
    """True when autograd must record the site's forward."""
    if not torch.is_grad_enabled():
        return False
    bias = base.bias
    return (x.requires_grad or base.weight.requires_grad or (bias is not None and bias.requires_grad)
            or any(a.requires_grad for a in group.As) or any(b.requires_grad for b in group.Bs))


def lora_linear_infer(base: nn.Linear, x: torch.Tensor, x_d: torch.Tensor | None, a: torch.Tensor,
                      b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Returns ``base(x) + alpha * (x_d A^T) B^T`` (``x_d`` None: ``x``) without recording gradients.

    Args:
        base: The ``nn.Linear`` (:func:`plain_linear` checked).
        x: Its input, (..., in), in the weight's and factors' dtype.
        x_d: The LoRA input (dropped out), or None for ``x``.
        a: (R, in) concatenated A.
        b: (out, R) concatenated B (columns scaled where coefficients differ).
        alpha: The one remaining coefficient.
    """
    y = F.linear(x, base.weight, base.bias)  # (..., out), fresh
    xd = x if x_d is None else x_d
    # Transposed views, not contiguous copies: MKL picks its kernel by layout and neither wins everywhere
    # (a contiguous (512, 32) A^T runs 1.5x slower than the view; at rank 16 they tie).
    xa = torch.mm(xd.reshape(-1, xd.shape[-1]), a.t())  # (N, R)
    y.view(-1, y.shape[-1]).addmm_(xa, b.t(), alpha=alpha)
    return y


def lora_linear_train(base: nn.Linear, x: torch.Tensor, x_d: torch.Tensor | None, a: torch.Tensor,
                      b: torch.Tensor, alpha: float) -> torch.Tensor:
    """As :func:`lora_linear_infer`, recorded for autograd (:class:`FusedLoRALinear`); ``a`` (R, in), ``b`` (out, R)."""
    return FusedLoRALinear.apply(x, base.weight, base.bias, a, b, alpha, x_d)
