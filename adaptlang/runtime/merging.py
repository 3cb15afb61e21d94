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

(rows of the out x in view scaled by ``v`` and ``g``, columns by ``u``; the
DoRA norm is the one of the unmerged weight, as in PEFT's ``LoraLayer.merge``;
DoRA: Liu et al. 2024, eq. 5; IA3: Liu et al. 2022, PEFT's ``IA3Layer.merge``). ``W'`` and ``b'``
are computed out of place, in fp32 (fp64 for an fp64 base), and rounded once
to the parameter's dtype; only then are they copied into the parameters'
own storage, so a merge that fails (a check, an allocation) changes nothing.

Taking the deltas out again depends on ``keep`` (:data:`KEEP_MODES`):

* ``"device"`` (default) and ``"cpu"``: merging keeps the original of every
  tensor it changes, next to it or in host memory, and unmerging copies it
  back: **bit for bit, in every dtype**. Memory: a full copy of each weight
  (and bias) a LoRA/DoRA/IA3 delta folds into; for a tensor only sparse
  deltas touch, its k original entries and their positions. Held until unmerged.
* ``"none"``: no copy. Unmerging inverts the arithmetic,
  ``W0 = (W' / v / u - K) / g``, from a snapshot of the factors taken at
  merge time (``r * (in + out)`` per LoRA, a few vectors): **within
  rounding** only (entries off by up to a rounding step of the merged values).
  Sparse entries still come back exact. A factor with a zero entry refuses
  to merge in this mode, as there is no way back.

Unmerging first restores the very tensors merging wrote into (same dtype and
device as then). If ``model.to(...)`` or ``.half()`` swapped a parameter's
tensor meanwhile, the live one then gets those restored values cast to its
dtype and device, as ``.to()`` casts: a device move or an up-cast is still
bit for bit the original; a down-cast rounds once, from the originals (not
from the merged values). The old tensors stay referenced until unmerged, and
kept copies stay on the device where they were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.ia3 import combined_factor
from adaptlang.runtime.layers import describe_layer, from_out_in, out_in_view

__all__ = ["KEEP_MODES", "MERGEABLE_KINDS", "MergeRecord", "NonFiniteMerge", "check_keep", "merge_parts",
           "merge_refusal", "unmerge_parts"]

#: Part kinds that fold into base weights.
MERGEABLE_KINDS = ("lora", "ia3", "sparse")

#: Where merging keeps what unmerging needs (module docstring).
KEEP_MODES = ("device", "cpu", "none")

#: A LoRA term of ``K``: (A (r, in), B (out, r), LoRA bias (out,) or None, coefficient: float or (out,)).
Term = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", Any]


@dataclass
class Inverse:
    """``keep="none"``: the factors as they were at merge time, for the arithmetic inverse."""

    terms: list[Term]
    u: torch.Tensor | None  # (in,)
    v: torch.Tensor | None  # (out,)
    g: torch.Tensor | None  # (out,)


@dataclass
class MergeRecord:
    """What :func:`merge_parts` did to one base module, enough to undo it.

    Attributes:
        base: The module whose parameters changed.
        kind: Its layer kind (``linear``, ``conv1d``, ``embedding``, or None).
        keep: The keep mode.
        dense: Parameter name -> its original values (``keep="none"``: None), for
            every parameter the merge rewrote whole.
        shapes: Parameter name -> shape at merge time, for every parameter touched.
        written: Parameter name -> the tensor merging wrote into (its ``.data`` then).
        sparse: ``(name, flat positions, original entries)`` of sparse-only targets
            (and, with ``keep="none"``, of every sparse target).
        inverse: ``keep="none"`` only.
    """

    base: nn.Module
    kind: str | None
    keep: str
    dense: dict[str, torch.Tensor | None] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    written: dict[str, torch.Tensor] = field(default_factory=dict)
    sparse: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    inverse: Inverse | None = None

    def kept_bytes(self) -> int:
        """Returns the bytes held to undo the merge (originals, positions, factor snapshots)."""
        tensors = [t for t in self.dense.values() if t is not None]
        tensors += [t for _, pos, orig in self.sparse for t in (pos, orig)]
        if self.inverse is not None:
            inv = self.inverse
            tensors += [t for term in inv.terms for t in term if isinstance(t, torch.Tensor)]
            tensors += [t for t in (inv.u, inv.v, inv.g) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def check_keep(keep: str) -> None:
    """Raises a :class:`RuntimeApplyError` unless ``keep`` is one of :data:`KEEP_MODES`."""
    if keep not in KEEP_MODES:
        raise RuntimeApplyError(Diagnostic(
            f"unknown merge keep mode '{keep}'", obj=str(keep), hint=did_you_mean(str(keep), KEEP_MODES),
            notes=(f"keep: one of {', '.join(KEEP_MODES)}",)))


def merge_refusal(site: Any, quantized: bool, tied: set[int], tuned: set[int]) -> str | None:
    """Why a site must stay unmerged when a whole model merges, or None.

    Args:
        site: The :class:`~adaptlang.runtime.site.SiteModule`.
        quantized: Its base weight is quantized.
        tied: ``id()`` of parameters the model reaches at more than one path.
        tuned: ``id()`` of ``tune`` deltas' copies.
    """
    if quantized:
        return "the base weight is quantized"
    params = [p for p in site.base._parameters.values() if p is not None]
    if any(id(p) in tied for p in params):
        # Folding into a shared tensor (GPT-2's lm_head and wte) would change the other module too.
        return "the base weight is tied to another module"
    if any(id(p) in tuned for p in params):
        return "the base weight is a tune delta's copy (merging would change what it trains and saves)"
    if any(p.requires_grad for p in params):
        # apply() froze the base: this one was unfrozen on purpose, and unmerging restores the originals.
        return "the base weight trains (requires_grad): unmerging would discard its updates"
    return None


def _param(base: nn.Module, name: str) -> torch.Tensor | None:
    tensor = base._parameters.get(name)
    return None if tensor is None else tensor.data


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision tensors (one rounding at the end), else the tensor's own."""
    return torch.promote_types(dtype, torch.float32)


def _check_nonzero(factor: torch.Tensor | None, what: str) -> None:
    if factor is not None and bool((factor == 0).any()):
        raise RuntimeApplyError(Diagnostic(
            f"cannot merge with keep='none': the {what} has a zero entry, so the merge could not be undone",
            hint="merge with keep='device' (keeps the original weights), or keep this site unmerged"))


def _low_rank_sum(terms: list[Term], dtype: torch.dtype, device: torch.device
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Returns ``K`` (out, in) and the bias change (out,), in ``dtype`` on ``device``."""
    k: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    for a, b, lb, coef in terms:
        if isinstance(coef, torch.Tensor):
            coef = coef.to(device)
        coef_col = coef.unsqueeze(1) if isinstance(coef, torch.Tensor) else coef  # per-row for DoRA
        delta = (b.to(device) @ a.to(device)) * coef_col  # (out, in)
        k = delta if k is None else k + delta
        if lb is not None:
            change = lb.to(device) * coef
            bias = change if bias is None else bias + change
    return (None if k is None else k.to(dtype)), (None if bias is None else bias.to(dtype))


def _with_sparse(tensor: torch.Tensor, parts: list[tuple[Any, float]]) -> torch.Tensor:
    """``tensor`` plus its sparse deltas, out of place, exactly as the unmerged forward adds them."""
    for part, w in parts:
        tensor = part.apply_to(tensor, w)
    return tensor


def _sparse_update(tensor: torch.Tensor, parts: list[tuple[Any, float]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (positions, original entries, merged entries) for the sparse deltas on one tensor.

    The merged entries get each part's values added in the same order and
    dtype as the forward's ``index_add``, so they are the same bits.
    """
    positions = torch.unique(torch.cat([p.indices for p, _ in parts]))  # sorted, (n,)
    originals = tensor.reshape(-1)[positions]  # advanced indexing copies
    entries = originals.clone()
    for part, w in parts:
        values = part.values.detach() if w == 1.0 else part.values.detach() * w
        entries.index_add_(0, torch.searchsorted(positions, part.indices), values.to(tensor.dtype))
    return positions, originals, entries


def _keep_copy(tensor: torch.Tensor, keep: str) -> torch.Tensor:
    return tensor.to("cpu", copy=True) if keep == "cpu" else tensor.clone()


def merge_parts(base: nn.Module, entries: list[tuple[Any, float]], keep: str = "device") -> MergeRecord:
    """Folds LoRA/DoRA, IA3 and sparse parts into ``base``'s parameters (module docstring).

    Args:
        base: The original module; its parameters' values change in place
            (same ``Parameter`` objects, same storage).
        entries: ``(part, weight)``; every part's kind must be in :data:`MERGEABLE_KINDS`.
        keep: ``"device"``, ``"cpu"`` (exact undo, at the cost of a copy of every
            changed tensor) or ``"none"`` (undo within rounding, no copy).

    Returns:
        The record :func:`unmerge_parts` needs.

    Raises:
        RuntimeApplyError: Nothing changed: an unknown ``keep``, a layer the deltas
            cannot fold into, a LoRA bias on a layer without one, or (``keep="none"``)
            a factor with a zero.
        NonFiniteMerge: Nothing changed: a merged value would be NaN/inf where the base's was finite.
    """
    check_keep(keep)
    exact = keep != "none"
    kind = describe_layer(base).kind
    ia3_in = [(p, w) for p, w in entries if p.kind == "ia3" and p.feedforward]
    ia3_out = [(p, w) for p, w in entries if p.kind == "ia3" and not p.feedforward]
    loras = [(p, w) for p, w in entries if p.kind == "lora"]
    targets: dict[str, list[tuple[Any, float]]] = {}
    for part, w in entries:
        if part.kind == "sparse":
            targets.setdefault(part.param, []).append((part, w))
    if (loras or ia3_in or ia3_out) and kind is None:
        raise RuntimeApplyError(f"cannot merge into a {type(base).__name__}: only Linear, Conv1D and Embedding fold")
    for name in targets:
        if _param(base, name) is None:
            raise RuntimeApplyError(Diagnostic(f"cannot merge: {type(base).__name__} has no parameter '{name}'",
                                               obj=name))
    bias = _param(base, "bias")
    if bias is None and any(p.lora_bias is not None for p, _ in loras):
        raise RuntimeApplyError("cannot merge a LoRA bias into a layer without a bias (as in PEFT)")
    record = MergeRecord(base=base, kind=kind, keep=keep)
    with torch.no_grad():
        u = combined_factor(ia3_in).detach() if ia3_in else None  # (in,)
        v = combined_factor(ia3_out).detach() if ia3_out else None  # (out,)
        new: dict[str, torch.Tensor] = {}
        if kind is not None and (loras or ia3_in or ia3_out):
            weight = _param(base, "weight")
            w0 = _with_sparse(weight, targets.get("weight", []))  # DoRA's norm sees the sparse deltas too
            terms: list[Term] = []
            g = None
            dora = [(p, w) for p, w in loras if p.dora]
            if dora:
                w0_oi = out_in_view(kind, w0).to(dora[0][0].lora_A.dtype)
                fs = [(p, w, p.magnitude.detach() / p.weight_norm(w0_oi)) for p, w in dora]
                g = 1 + sum(w * (f - 1) for _, w, f in fs)
                terms += [(p.lora_A.detach(), p.lora_B.detach(), _detached(p.lora_bias), w * p.scaling * f)
                          for p, w, f in fs]
            terms = [(p.lora_A.detach(), p.lora_B.detach(), _detached(p.lora_bias), w * p.scaling)
                     for p, w in loras if not p.dora] + terms
            if not exact:
                for factor, what in ((u, "IA3 input factor"), (v, "IA3 output factor"), (g, "DoRA row scale")):
                    _check_nonzero(factor, what)
                record.inverse = Inverse(
                    terms=[tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in term) for term in terms],
                    u=None if u is None else u.clone(), v=None if v is None else v.clone(),
                    g=None if g is None else g.clone())
            cdt = _compute_dtype(weight.dtype)
            k, dbias = _low_rank_sum(terms, cdt, weight.device)
            w_oi = out_in_view(kind, w0).to(cdt, copy=True)
            if g is not None:
                w_oi.mul_(g.to(cdt).unsqueeze(1))
            if k is not None:
                w_oi.add_(k)
            if v is not None:
                w_oi.mul_(v.to(cdt).unsqueeze(1))
            if u is not None:
                w_oi.mul_(u.to(cdt).unsqueeze(0))
            new["weight"] = from_out_in(kind, w_oi).to(weight.dtype)
            if bias is not None and (dbias is not None or v is not None):
                b = _with_sparse(bias, targets.get("bias", [])).to(cdt, copy=True)
                if dbias is not None:
                    b.add_(dbias)
                if v is not None:
                    b.mul_(v.to(cdt))
                new["bias"] = b.to(bias.dtype)
        # Sparse-only targets change in k entries: keep those, not the whole tensor. keep="none" keeps
        # the entries of every sparse target, so the arithmetic inverse ends with the exact originals.
        updates = {name: _sparse_update(_param(base, name), parts) for name, parts in targets.items()
                   if name not in new or not exact}
        for name in set(new) | set(targets):
            record.written[name] = _param(base, name)
            record.shapes[name] = tuple(record.written[name].shape)
        for name in new:
            record.dense[name] = _keep_copy(_param(base, name), keep) if exact else None
        for name, (positions, originals, _) in updates.items():
            record.sparse.append((name, positions, originals.cpu() if keep == "cpu" else originals))
        checks = [(n, _param(base, n), v) for n, v in new.items()]
        checks += [(n, orig, merged) for n, (_, orig, merged) in updates.items() if n not in new]
        for name, before, after in checks:
            _check_finite_merge(base, name, before, after)
        # Every check and allocation is done: from here on the parameters change.
        for name, value in new.items():
            _param(base, name).copy_(value)
        for name, (positions, _, merged) in updates.items():
            if name not in new:
                _param(base, name).view(-1)[positions] = merged
    return record


class NonFiniteMerge(RuntimeApplyError):
    """A merge would write NaN/infinity into a base weight: the whole merge is refused, nothing written."""


def _check_finite_merge(base: nn.Module, name: str, before: torch.Tensor, after: torch.Tensor) -> None:
    """Raises :class:`NonFiniteMerge` when ``after`` is non-finite where ``before`` (the base's own) was finite."""
    ok = torch.isfinite(after)
    if bool(ok.all()):
        return
    if new_bad := int((~ok & torch.isfinite(before.reshape(after.shape))).sum()):
        raise NonFiniteMerge(Diagnostic(
            f"merging would write {new_bad:,} NaN or infinite value(s) into {type(base).__name__}.{name}; "
            "nothing was merged", obj=name,
            hint="a delta holds non-finite values or overflows (check its factors, alpha and task weight); "
                 "the base weights are unchanged"))


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _live(record: MergeRecord, name: str) -> torch.Tensor:
    """The parameter now in ``name``'s slot (after ``.to()`` maybe another tensor), checked against the merge."""
    tensor = _param(record.base, name)
    owner = type(record.base).__name__
    if tensor is None:
        raise RuntimeApplyError(Diagnostic(f"cannot unmerge: {owner} has no parameter '{name}' any more", obj=name))
    if tuple(tensor.shape) != record.shapes[name]:
        raise RuntimeApplyError(Diagnostic(
            f"cannot unmerge: {owner}.{name} has shape {tuple(tensor.shape)}, it was {record.shapes[name]} "
            "when merged", obj=name, hint="put back a parameter of the merged shape"))
    return tensor


def unmerge_parts(record: MergeRecord) -> None:
    """Undoes :func:`merge_parts`: bit for bit unless merged with ``keep="none"`` (module docstring).

    Writes into the parameters' own storage (the same ``Parameter`` objects).

    Raises:
        RuntimeApplyError: A parameter removed or reshaped since the merge (nothing changes).
    """
    live = {name: _live(record, name) for name in record.shapes}
    written = record.written
    with torch.no_grad():
        if record.inverse is None:
            for name, original in record.dense.items():
                written[name].copy_(original)
        else:
            _invert(record, written)
        for name, positions, originals in record.sparse:
            tensor = written[name]
            tensor.view(-1)[positions] = originals.to(tensor.device)
        for name, tensor in live.items():
            old = written[name]
            if (tensor.data_ptr(), tensor.dtype, tensor.device) != (old.data_ptr(), old.dtype, old.device):
                tensor.copy_(old)  # converted while merged: the originals, cast as .to() casts


def _invert(record: MergeRecord, written: dict[str, torch.Tensor]) -> None:
    """``keep="none"``: ``W0 = (W' / v / u - K) / g`` and ``b0 = b' / v - db``, within rounding."""
    inv = record.inverse
    weight = written["weight"]
    cdt, dev = _compute_dtype(weight.dtype), weight.device
    u, v, g = (None if t is None else t.to(dev, cdt) for t in (inv.u, inv.v, inv.g))
    k, dbias = _low_rank_sum(inv.terms, cdt, dev)
    w_oi = out_in_view(record.kind, weight).to(cdt, copy=True)
    if u is not None:
        w_oi.div_(u.unsqueeze(0))
    if v is not None:
        w_oi.div_(v.unsqueeze(1))
    if k is not None:
        w_oi.sub_(k)
    if g is not None:
        w_oi.div_(g.unsqueeze(1))
    weight.copy_(from_out_in(record.kind, w_oi))
    if "bias" in record.dense:
        bias = written["bias"]
        b = bias.to(cdt, copy=True)
        if v is not None:
            b.div_(v)
        if dbias is not None:
            b.sub_(dbias)
        bias.copy_(b)
