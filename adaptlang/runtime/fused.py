"""The LoRA hot path: :class:`LoRAGroup` (stacked parts as one product) and the fused ``nn.Linear``.

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

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from adaptlang.runtime.layers import EMBEDDING

__all__ = [
    "FactorCache", "FusedLoRALinear", "LoRAGroup", "lora_linear_infer", "lora_linear_train", "needs_grad",
    "plain_linear",
]


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
        if len(group.parts) == 1:
            return group.factors()
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


class LoRAGroup:
    """Plain LoRA parts active at one site with one dropout probability, run as one product.

    ``y + x @ cat(A_i).T @ cat(c_i B_i).T``: one matmul for A, one ``addmm``
    for B and the addition, whatever the number of parts. Built once per
    ``set_active``; only the concatenation of the (trainable) factors is
    redone per call.

    Args:
        entries: ``(part, weight)`` pairs (not DoRA), in activation order.
        base: The original module (Embedding options).
    """

    __slots__ = ("base", "parts", "coefs", "dropout", "embedding", "alpha", "scaled", "has_bias", "cache")

    def __init__(self, entries: Sequence[tuple[Any, float]], base: nn.Module):
        self.base = base
        self.parts = [p for p, _ in entries]
        self.coefs = [w * p.scaling for p, w in entries]
        self.dropout = self.parts[0].dropout
        self.embedding = self.parts[0].layer_kind == EMBEDDING
        # One alpha for addmm when every coefficient is equal; else B columns are scaled per part.
        self.scaled = len(set(self.coefs)) > 1
        self.alpha = 1.0 if self.scaled else self.coefs[0]
        self.has_bias = any(p._parameters["lora_bias"] is not None for p in self.parts)
        self.cache = FactorCache()

    # The factors are read from the parts at every call, never kept: a sharding engine (FSDP2's
    # fully_shard, FSDP1) or .to() puts other tensor objects in the parts' parameter slots, and a
    # kept object would be the stale one (gradients would land on it, and FSDP1's is a 1-D shard).
    @property
    def As(self) -> tuple[torch.Tensor, ...]:
        """Each part's ``lora_A`` as its module holds it now: (r_i, in)."""
        return tuple(p._parameters["lora_A"] for p in self.parts)

    @property
    def Bs(self) -> tuple[torch.Tensor, ...]:
        """Each part's ``lora_B`` as its module holds it now: (out, r_i)."""
        return tuple(p._parameters["lora_B"] for p in self.parts)

    @property
    def biases(self) -> list[tuple[torch.Tensor, float]]:
        """``(lora_bias (out,), coefficient)`` of the parts that have one, read now."""
        if not self.has_bias:
            return []
        return [(p._parameters["lora_bias"], c) for p, c in zip(self.parts, self.coefs)
                if p._parameters["lora_bias"] is not None]

    @property
    def dtype(self) -> torch.dtype:
        """The factors' dtype."""
        return self.parts[0]._parameters["lora_A"].dtype

    @property
    def rank(self) -> int:
        """The concatenated rank R."""
        return sum(p.rank for p in self.parts)

    def factors(self, scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(A, B)``: (R, in) and (out, R).

        Args:
            scaled: Scale B's columns by their part's coefficient when the
                coefficients differ (else ``alpha`` carries the one coefficient);
                False gives the bare factors (per-row coefficients apply them).
        """
        if len(self.parts) == 1:
            params = self.parts[0]._parameters
            return params["lora_A"], params["lora_B"]
        a = torch.cat(self.As, 0)  # (R, in)
        bs = self.Bs
        if self.scaled and scaled:
            return a, torch.cat([b * c for b, c in zip(bs, self.coefs)], 1)  # (out, R)
        return a, torch.cat(bs, 1)

    def project(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Returns ``x @ A.T`` (..., R): a matmul, or a gather of A's columns for ids."""
        if self.embedding:
            return F.embedding(x, a.t(), self.base.padding_idx, None, 2.0, self.base.scale_grad_by_freq,
                               self.base.sparse)
        return F.linear(x, a)

    def run_fused(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Returns ``base(x)`` plus every part's contribution, fused (:mod:`adaptlang.runtime.fused`).

        The caller checked that the base is a plain ``nn.Linear`` and that
        ``x``, its weight and the factors share one dtype.
        """
        x_d = F.dropout(x, self.dropout, True) if self.dropout and training else None
        if needs_grad(x, self.base, self):
            a, b = self.factors()
            out = lora_linear_train(self.base, x, x_d, a, b, self.alpha)
        else:
            a, b = self.cache.get(self)
            out = lora_linear_infer(self.base, x, x_d, a, b, self.alpha)
        for bias, coef in self.biases:
            out = out + (bias * coef).to(out.dtype)
        return out

    def add_to(self, y: torch.Tensor, x: torch.Tensor, training: bool, inplace: bool = False) -> torch.Tensor:
        """Returns ``y`` plus every part's contribution for input ``x``.

        Args:
            y: The output so far, (..., out).
            x: The input, (..., in) or ids.
            training: Whether dropout is on.
            inplace: ``y`` is a fresh base output nobody else holds: add into
                it (``addmm_``), which saves allocating and writing a second
                output (about a third of LoRA's cost on CPU). Autograd allows
                it: Linear, Conv1D and Embedding do not save their output.
        """
        if self.dropout and training:
            x = F.dropout(x, self.dropout, True)
        a, b = self.factors()
        if not self.embedding and x.dtype != a.dtype:
            x = x.to(a.dtype)
        xa = self.project(x, a)  # (..., R)
        if y.dtype == a.dtype == xa.dtype:  # (under autocast xa may come out in the autocast dtype)
            y2 = y.reshape(-1, y.shape[-1])  # (N, out)
            xa2 = xa.reshape(-1, xa.shape[-1])  # (N, R)
            if inplace and y.is_contiguous():  # y2 is then a view of y
                y2.addmm_(xa2, b.t(), alpha=self.alpha)
                out = y
            else:
                out = torch.addmm(y2, xa2, b.t(), alpha=self.alpha).view(y.shape)
        else:  # a half-precision base with fp32 factors: add in the factors' dtype, then cast back
            out = (y + F.linear(xa, b) * self.alpha).to(y.dtype)
        for bias, coef in self.biases:
            out = out + (bias * coef).to(out.dtype)
        return out
