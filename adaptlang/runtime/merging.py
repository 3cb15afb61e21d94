"""Folding LoRA, DoRA, IA3 and sparse deltas into a base weight, and taking them out again.

The unmerged site computes (see :mod:`adaptlang.runtime.site`), per output
row, with ``W0 = W + sum(sparse)`` and ``x' = u * x``::

    y = v * ( W0 x' + b0 + sum_i c_i (B_i A_i x' + lb_i)
              + sum_j w_j ((f_j - 1) W0 x' + f_j s_j (B_j A_j x' + lb_j)) )

(plain LoRA ``i`` with ``c_i = w_i s_i``; DoRA ``j`` with ``f_j = m_j / ||W0 + s_j B_j A_j||``;
``u``/``v`` the IA3 input/output factors). That is the layer ``W' x + b'`` with::

    W' = v * (g * W0 + K) * u        g = 1 + sum_j w_j (f_j - 1)
    b' = v * (b0 + sum_i c_i lb_i + sum_j w_j f_j s_j lb_j)
    K  = sum_i c_i B_i A_i + sum_j w_j f_j s_j B_j A_j

(rows of the out x in view scaled by ``v`` and ``g``, columns by ``u``).
Unmerging inverts it: ``W0 = (W' / v / u - K) / g``, then the sparse
entries get back the exact values they had. ``f_j``, ``u``, ``v`` are kept
from merge time (DoRA's norm must be the one of the unmerged weight, as in
PEFT); ``K`` is recomputed from the factors. Merging refuses, before
changing anything, when a factor has a zero (no exact way back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.ia3 import combined_factor
from adaptlang.runtime.layers import describe_layer, out_in_view

__all__ = ["MERGEABLE_KINDS", "MergeRecord", "merge_parts", "unmerge_parts"]

#: Part kinds that fold into base weights.
MERGEABLE_KINDS = ("lora", "ia3", "sparse")


@dataclass
class MergeRecord:
    """What :func:`merge_parts` did to one base module, enough to undo it."""

    base: nn.Module
    kind: str | None
    lora: list[tuple[Any, float]] = field(default_factory=list)
    dora: list[tuple[Any, float, torch.Tensor]] = field(default_factory=list)
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None
    g: torch.Tensor | None = None
    # (parameter name, indices, saved entries): a name, not the tensor, so that copies and .to() follow.
    sparse: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _param(base: nn.Module, name: str) -> torch.Tensor | None:
    tensor = base._parameters.get(name)
    return None if tensor is None else tensor.data


def _check_nonzero(factor: torch.Tensor | None, what: str) -> None:
    if factor is not None and bool((factor == 0).any()):
        raise RuntimeApplyError(Diagnostic(
            f"cannot merge: the {what} has a zero entry, so the merge could not be undone exactly",
            hint="keep this site unmerged"))


def _low_rank_sum(record: MergeRecord, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Returns ``K`` (out, in) and the bias change, from the factors as they are now."""
    k: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    terms = [(p, w * p.scaling) for p, w in record.lora]
    terms += [(p, w * p.scaling * f) for p, w, f in record.dora]
    for part, coef in terms:
        coef_col = coef.unsqueeze(1) if isinstance(coef, torch.Tensor) else coef  # per-row for DoRA
        delta = (part.lora_B.detach() @ part.lora_A.detach()) * coef_col  # (out, in)
        k = delta if k is None else k + delta
        if part.lora_bias is not None:
            b = part.lora_bias.detach() * coef
            bias = b if bias is None else bias + b
    return (None if k is None else k.to(dtype)), (None if bias is None else bias.to(dtype))


def merge_parts(base: nn.Module, entries: list[tuple[Any, float]]) -> MergeRecord:
    """Folds LoRA/DoRA, IA3 and sparse parts into ``base``'s parameters, in place.

    Args:
        base: The original module (its parameters' ``.data`` change).
        entries: ``(part, weight)``; every part's kind must be in :data:`MERGEABLE_KINDS`.

    Returns:
        The record :func:`unmerge_parts` needs.

    Raises:
        RuntimeApplyError: Nothing changed: a layer the deltas cannot fold into,
            a factor with a zero, or a LoRA bias on a layer without one.
    """
    kind = describe_layer(base).kind
    record = MergeRecord(base=base, kind=kind)
    ia3_in = [(p, w) for p, w in entries if p.kind == "ia3" and p.feedforward]
    ia3_out = [(p, w) for p, w in entries if p.kind == "ia3" and not p.feedforward]
    sparse = [(p, w) for p, w in entries if p.kind == "sparse"]
    loras = [(p, w) for p, w in entries if p.kind == "lora"]
    if (loras or ia3_in or ia3_out) and kind is None:
        raise RuntimeApplyError(f"cannot merge into a {type(base).__name__}: only Linear, Conv1D and Embedding fold")
    for part, _ in sparse:
        if _param(base, part.param) is None:
            raise RuntimeApplyError(f"cannot merge: {type(base).__name__} has no parameter '{part.param}'")
    bias = _param(base, "bias")
    if bias is None and any(p.lora_bias is not None for p, _ in loras):
        raise RuntimeApplyError("cannot merge a LoRA bias into a layer without a bias (as in PEFT)")
    with torch.no_grad():
        record.u = combined_factor(ia3_in).detach().clone() if ia3_in else None
        record.v = combined_factor(ia3_out).detach().clone() if ia3_out else None
        _check_nonzero(record.u, "IA3 input factor")
        _check_nonzero(record.v, "IA3 output factor")
        weight = _param(base, "weight") if kind is not None else None
        if any(p.dora for p, _ in loras):
            w0 = weight
            for part, w in sparse:  # DoRA's norm sees the sparse deltas, as the forward does
                if part.param == "weight":
                    w0 = part.apply_to(w0, w)
            w0_oi = out_in_view(kind, w0).to(loras[0][0].lora_A.dtype)
            for part, w in loras:
                if part.dora:
                    record.dora.append((part, w, part.magnitude.detach() / part.weight_norm(w0_oi)))
            record.g = 1 + sum(w * (f - 1) for _, w, f in record.dora)
            _check_nonzero(record.g, "DoRA row scale")
        record.lora = [(p, w) for p, w in loras if not p.dora]
        # Checks done: from here on the parameters change.
        for part, w in sparse:
            target = _param(base, part.param)
            record.sparse.append((part.param, part.indices, part.merge_into(target, w)))
        if kind is None:
            return record
        w_oi = out_in_view(kind, weight)
        k, dbias = _low_rank_sum(record, weight.dtype)
        if record.g is not None:
            w_oi.mul_(record.g.to(weight.dtype).unsqueeze(1))
        if k is not None:
            w_oi.add_(k)
        if record.v is not None:
            w_oi.mul_(record.v.to(weight.dtype).unsqueeze(1))
        if record.u is not None:
            w_oi.mul_(record.u.to(weight.dtype).unsqueeze(0))
        if bias is not None:
            if dbias is not None:
                bias.add_(dbias)
            if record.v is not None:
                bias.mul_(record.v.to(bias.dtype))
    return record


def unmerge_parts(record: MergeRecord) -> None:
    """Undoes :func:`merge_parts` (exact for sparse entries, float rounding elsewhere)."""
    base, kind = record.base, record.kind
    with torch.no_grad():
        if kind is not None:
            weight = _param(base, "weight")
            bias = _param(base, "bias")
            w_oi = out_in_view(kind, weight)
            if record.u is not None:
                w_oi.div_(record.u.to(weight.dtype).unsqueeze(0))
            if record.v is not None:
                w_oi.div_(record.v.to(weight.dtype).unsqueeze(1))
            k, dbias = _low_rank_sum(record, weight.dtype)
            if k is not None:
                w_oi.sub_(k)
            if record.g is not None:
                w_oi.div_(record.g.to(weight.dtype).unsqueeze(1))
            if bias is not None:
                if record.v is not None:
                    bias.div_(record.v.to(bias.dtype))
                if dbias is not None:
                    bias.sub_(dbias)
        for name, indices, saved in reversed(record.sparse):
            target = _param(base, name)
            target.view(-1)[indices] = saved.to(target.dtype)
