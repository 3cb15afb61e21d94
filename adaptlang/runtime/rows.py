"""Mixed-task batches at one site: every batch row runs under its own deltas, in one forward.

``SiteModule.set_rows(rows)`` takes, for each row of the next batches, its
ordered ``(delta, weight)`` list (empty: the base alone). :class:`RowProgram`
turns that into per-row weights once (``W``: (B, n) over the union of the
deltas), so that every part runs once for the whole batch:

* plain LoRA: per dropout group, every row gathers its own (concatenated)
  factors and one batched product runs for all rows
  (:class:`~adaptlang.runtime.row_lora.RowLoRAGroup`): a single task's
  arithmetic whatever the number of tasks;
* DoRA: its term for all rows times the per-row weight (B, 1, 1);
* IA3: a per-row factor ``prod_j (1 + W[:, j] (v_j - 1))`` (B, 1, n);
* sparse (Linear/Conv1D/Embedding weights): the delta's own product ``S x``
  times the per-row weight;
* adapters: computed only on the rows that use them (``index_select``, then
  ``index_copy`` / ``index_add`` back), in the union's order; two rows that
  order the same adapters differently at one site are refused.

Each row then equals that row run alone with its list activated (float
rounding aside). Dropout draws one mask for the batch, as the plain forward does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.adapter import map_main_output
from adaptlang.runtime.layers import (
    EMBEDDING, describe_layer, first_input, module_device, replace_first_input, run_layer,
)
from adaptlang.runtime.program import FULL, Program, dora_terms, effective_tensors, output_is_private, run_base
from adaptlang.runtime.row_lora import RowLoRAGroup

__all__ = ["RowProgram"]


class RowProgram:
    """The precomputed forward of one site for per-row activations (module docstring).

    Args:
        base: The original module.
        parts: The site's parts by delta name.
        rows: Per batch row, the ordered ``(delta, weight)`` list.
        quant: The quantized base weight, or None.
    """

    mode = FULL

    def __init__(self, base: nn.Module, parts: dict[str, nn.Module], rows: list[list[tuple[str, float]]],
                 quant: Any):
        self.base, self.kind, self.quant = base, describe_layer(base).kind, quant
        self.batch = len(rows)
        order: list[str] = []
        for row in rows:
            order += [d for d, _ in row if d not in order]
        device = module_device(base)
        weights = torch.zeros(self.batch, len(order), dtype=torch.float64)
        listed = torch.zeros(self.batch, len(order), dtype=torch.bool)
        for r, row in enumerate(rows):
            for delta, w in row:
                weights[r, order.index(delta)] = float(w)
                listed[r, order.index(delta)] = True
        self.order = order
        cols = {d: weights[:, j] for j, d in enumerate(order)}
        uses = {d: listed[:, j] for j, d in enumerate(order)}
        entries = [(d, parts[d]) for d in order]
        self.groups, self.dora, self.ia3_in, self.ia3_out, self.sparse = [], [], [], [], []
        self.before, self.parallel, self.after = [], [], []
        plain: dict[float, list[tuple[Any, torch.Tensor]]] = {}
        for delta, part in entries:
            col = cols[delta]
            if part.kind == "lora":
                if part.dora:
                    self.dora.append((part, _row_view(col, device, part.lora_A.dtype)))
                else:
                    plain.setdefault(part.dropout, []).append((part, col))
            elif part.kind == "ia3":
                (self.ia3_in if part.feedforward else self.ia3_out).append((part, col.to(device, part.ia3_l.dtype)))
            elif part.kind == "sparse":
                if part.param != "weight" or self.kind is None:
                    raise RuntimeApplyError(f"sparse delta '{delta}' on '{part.param}' of a {type(base).__name__} "
                                            "cannot differ between rows of one batch")
                self.sparse.append((part, _row_view(col, device, part.values.dtype)))
            else:
                idx = torch.nonzero(uses[delta]).flatten()  # rows that list it (even at weight 0)
                rows_w = _row_view(col[idx], device, part.down.weight.dtype)
                getattr(self, part.placement).append((part, idx.to(device), rows_w, idx.numel() == self.batch))
        self.groups = [RowLoRAGroup(group, base, device) for group in plain.values()]
        self.override = quant is not None
        self._check_adapter_order(rows, parts)
        # DoRA normalises the weight it adds to, W + the row's sparse deltas, which differ per row:
        # such sites run each distinct row list as its own program, on its rows (exact, a little slower).
        self.by_list = None
        if self.dora and self.sparse:
            lists: dict[tuple, list[int]] = {}
            for r, row in enumerate(rows):
                lists.setdefault(tuple(row), []).append(r)
            self.by_list = [(Program.build(base, [(parts[d], w) for d, w in key], quant),
                             torch.tensor(members, device=device)) for key, members in lists.items()]

    def _run_by_list(self, x: torch.Tensor, args: tuple, kwargs: dict, training: bool) -> torch.Tensor:
        """The site forward for DoRA with sparse deltas: each distinct row list's program on its rows.

        Returns:
            The outputs put back in row order: (B, ...).
        """
        out = None
        for prog, idx in self.by_list:
            sub_args, sub_kwargs = replace_first_input(args, kwargs, x.index_select(0, idx))
            y = prog.run(sub_args, sub_kwargs, training)
            if not isinstance(y, torch.Tensor):
                raise RuntimeApplyError(f"per-row DoRA with sparse deltas needs a tensor output, got {type(y).__name__}")
            out = y.new_empty((x.shape[0],) + tuple(y.shape[1:])) if out is None else out  # (B, ...)
            out = out.index_copy(0, idx, y)
        return out

    def _check_adapter_order(self, rows: list[list[tuple[str, float]]], parts: dict[str, nn.Module]) -> None:
        """Refuses rows that order the same adapters at this site differently."""
        for r, row in enumerate(rows):
            adapters = [d for d, _ in row if parts[d].kind == "adapter"]
            if adapters != sorted(adapters, key=self.order.index):
                raise RuntimeApplyError(
                    f"batch row {r} orders the adapters {adapters} differently from an earlier row at this site")

    # ---------------------------------------------------------------- run
    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], training: bool) -> Any:
        """The site forward with per-row deltas."""
        x = first_input(args, kwargs)
        if x.shape[0] != self.batch:
            raise RuntimeApplyError(f"per-row deltas were set for {self.batch} rows; the input has {x.shape[0]}")
        if self.by_list is not None:
            return self._run_by_list(x, args, kwargs, training)
        for part, idx, w, every in self.before:
            x = _on_rows(x, part, idx, w, every, training, residual=part.residual)
        xb = x
        if self.ia3_in:
            factor = _row_factor(self.ia3_in, x.dim())
            x = (x.to(factor.dtype) * factor).to(x.dtype)
        args, kwargs = replace_first_input(args, kwargs, x)
        # Sparse deltas differ per row, so they are not in the weight: only dequantization is.
        tensors = effective_tensors(self.base, self.quant, []) if self.override else None
        y = run_base(self, args, kwargs, tensors)

        def adapt(h: torch.Tensor) -> torch.Tensor:
            base_out = h
            # In place only into a fresh base output that DoRA does not need afterwards.
            inplace = (self.kind is not None and not self.dora and not torch.is_grad_enabled()
                       and (tensors is not None or output_is_private(self.base)))
            for group in self.groups:
                h = group.add_to(h, x, training, inplace)
            if self.dora:  # terms for every row, times each row's weight (B, 1, ...)
                for term, w in dora_terms(self, base_out, x, tensors, training):
                    h = h + (term * w.view(-1, *([1] * (term.dim() - 1)))).to(h.dtype)
            for part, w in self.sparse:
                dense = part.dense(1.0)  # the parameter's layout
                xs = x if self.kind == EMBEDDING else x.to(dense.dtype)
                delta = run_layer(self.kind, self.base, xs, dense, None)
                h = h + (delta * w.view(-1, *([1] * (delta.dim() - 1)))).to(h.dtype)
            if self.ia3_out:
                factor = _row_factor(self.ia3_out, h.dim())
                h = (h.to(factor.dtype) * factor).to(h.dtype)
            for part, idx, w, _ in self.parallel:
                delta = part.delta(xb.index_select(0, idx), 1.0, training)
                h = h.index_add(0, idx, delta * w.view(-1, *([1] * (delta.dim() - 1))).to(delta.dtype))
            for part, idx, w, every in self.after:
                h = _on_rows(h, part, idx, w, every, training, residual=part.residual)
            return h

        return map_main_output(y, adapt)


def _row_view(col: torch.Tensor, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """A (B,) weight column as (B, 1, 1) on the parts' device and dtype."""
    return col.to(device, dtype).view(-1, 1, 1)


def _row_factor(entries: list[tuple[Any, torch.Tensor]], ndim: int) -> torch.Tensor:
    """Per-row IA3 factor ``prod_j (1 + w_j (v_j - 1))``, shaped (B, 1, ..., n)."""
    factor = None
    for part, col in entries:
        f = 1.0 + col.unsqueeze(1) * (part.ia3_l - 1.0).unsqueeze(0)  # (B, n)
        factor = f if factor is None else factor * f
    return factor.view(factor.shape[0], *([1] * (ndim - 2)), factor.shape[1])


def _on_rows(h: torch.Tensor, part: Any, idx: torch.Tensor, w: torch.Tensor, every: bool, training: bool,
             residual: bool) -> torch.Tensor:
    """Applies an adapter to the rows ``idx`` of ``h`` only (weights ``w`` per row)."""
    sub = h if every else h.index_select(0, idx)
    delta = part.delta(sub, 1.0, training) * w.view(-1, *([1] * (sub.dim() - 1))).to(h.dtype)
    new = sub + delta if residual else delta
    return new if every else h.index_copy(0, idx, new)
