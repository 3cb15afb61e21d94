"""Plain LoRA in a mixed-task batch: every row's own low-rank product, batched.

Rows that run different LoRA deltas at one site share no factors, so one
concatenated product over the union (``x @ cat(A_i).T``, masked per row)
costs K times a single task's for K tasks. Instead each distinct row
configuration (a *slot*: which parts, with which coefficients) gets its
concatenated factors, zero-padded to the widest rank ``R``; every row gathers
its slot's factors and one batched product runs for the whole batch::

    A_rows = stack(A_slot)[slot_of_row]          # (B, R, in)
    xa     = bmm(x, A_rows^T) * coef_row         # (B, T, R)
    y      = baddbmm(y, xa, B_rows^T)            # (B, T, out)

That is the arithmetic of a single task (rank ``R`` per row) plus a gather of
``B * R * (in + out)`` weights, whatever the number of tasks. Rows without
LoRA at the site use slot 0 with a zero coefficient (their contribution is
exactly zero). The coefficients (task weight times scaling) are applied to
``xa`` per rank column, so the factors are used as stored and gradients
reach them unchanged.

Embeddings (``A`` is gathered by ids, there is no product to save) use the
masked union product instead (:func:`add_masked`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from adaptlang.runtime.lora import LoRAGroup

__all__ = ["RowLoRAGroup", "add_masked"]


class RowLoRAGroup:
    """Plain LoRA parts with one dropout probability, per row (module docstring).

    Args:
        group: ``(part, weight column (B,))`` for every part of the union, in order.
        base: The original module.
        device: Where the parts live.
    """

    def __init__(self, group: list[tuple[Any, torch.Tensor]], base: Any, device: Any):
        self.union = LoRAGroup([(p, 1.0) for p, _ in group], base)
        self.dropout = self.union.dropout
        parts = [p for p, _ in group]
        dtype = parts[0].lora_A.dtype
        batch = group[0][1].shape[0]
        # A row's slot: the parts it uses (nonzero coefficient), in union order.
        slot_keys: dict[tuple[int, ...], int] = {}
        row_slot, row_coefs = [], []
        for r in range(batch):
            used = tuple(j for j, (_, col) in enumerate(group) if float(col[r]) != 0.0)
            if used and used not in slot_keys:
                slot_keys[used] = len(slot_keys)
            row_slot.append(slot_keys.get(used, 0))
            row_coefs.append([float(group[j][1][r]) * parts[j].scaling for j in used])
        self.slots = [[parts[j] for j in key] for key in slot_keys] or [[]]
        self.rank = max((sum(p.rank for p in slot) for slot in self.slots), default=0)
        coef = torch.zeros(batch, max(self.rank, 1), dtype=torch.float64)
        for r, (used_coefs, s) in enumerate(zip(row_coefs, row_slot)):
            col = 0
            for part, c in zip(self.slots[s], used_coefs):
                coef[r, col:col + part.rank] = c
                col += part.rank
        self.coef = coef.to(device, dtype)  # (B, R)
        self.row_slot = torch.tensor(row_slot, dtype=torch.long, device=device)  # (B,)
        self.single = len(self.slots) == 1  # every LoRA row runs the same parts: no gather
        # Embeddings: each row's coefficient over the union's concatenated rank columns.
        self.union_mask = torch.cat([col.unsqueeze(1).expand(-1, p.rank) * p.scaling for p, col in group],
                                    dim=1).to(device, dtype)  # (B, R_union)
        # Parts, not their bias tensors: those are read per call (an engine may swap the objects).
        self.bias_parts = [(p, (col * p.scaling).to(device, dtype)) for p, col in group
                           if p.lora_bias is not None]

    @property
    def biases(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(lora_bias (out,), per-row coefficient (B,))``, read from the parts now."""
        return [(p._parameters["lora_bias"], coef) for p, coef in self.bias_parts]

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the slots' stacked factors, zero-padded: (U, R, in) and (U, out, R)."""
        a_list, b_list = [], []
        for slot in self.slots:
            a = torch.cat([p.lora_A for p in slot], 0) if len(slot) > 1 else slot[0].lora_A  # (R_u, in)
            b = torch.cat([p.lora_B for p in slot], 1) if len(slot) > 1 else slot[0].lora_B  # (out, R_u)
            pad = self.rank - a.shape[0]
            if pad:
                a = F.pad(a, (0, 0, 0, pad))
                b = F.pad(b, (0, pad))
            a_list.append(a)
            b_list.append(b)
        return torch.stack(a_list), torch.stack(b_list)

    def add_to(self, y: torch.Tensor, x: torch.Tensor, training: bool, inplace: bool) -> torch.Tensor:
        """Returns ``y`` plus each row's own LoRA contribution.

        Args:
            y: The output so far, (B, ..., out).
            x: The site's input, (B, ..., in).
            training: Whether dropout is on.
            inplace: ``y`` is a fresh output nobody else holds (and no gradient is recorded).
        """
        if self.union.embedding:
            return add_masked(self.union, self.union_mask, self.biases, y, x, training)
        if self.dropout and training:
            x = F.dropout(x, self.dropout, True)
        batch = x.shape[0]
        a, b = self._factors()
        if x.dtype != a.dtype:
            x = x.to(a.dtype)
        x3 = x.reshape(batch, -1, x.shape[-1])  # (B, T, in)
        out_shape = y.shape
        fresh = inplace and y.dtype == a.dtype and y.is_contiguous()
        if self.single:  # one slot: plain 2-D products, per-row coefficients only
            xa = torch.matmul(x3, a[0].t()) * self.coef.unsqueeze(1)  # (B, T, R)
            xa2, bt = xa.view(-1, xa.shape[-1]), b[0].t()  # (N, R), (R, out)
            if fresh:
                y.view(-1, out_shape[-1]).addmm_(xa2, bt)
                out = y
            else:
                out = y + torch.mm(xa2, bt).view(out_shape).to(y.dtype)
        else:
            xa = torch.bmm(x3, a.index_select(0, self.row_slot).transpose(1, 2))  # (B, T, R)
            xa = xa * self.coef.unsqueeze(1)
            b_rows = b.index_select(0, self.row_slot).transpose(1, 2)  # (B, R, out)
            if fresh:
                y.view(batch, -1, out_shape[-1]).baddbmm_(xa, b_rows)
                out = y
            else:
                out = y + torch.bmm(xa, b_rows).view(out_shape).to(y.dtype)
        for bias, coef in self.biases:  # coef (B,): the part's per-row coefficient
            out = out + (coef.view(-1, *([1] * (out.dim() - 1))) * bias).to(out.dtype)
        return out


def add_masked(group: LoRAGroup, mask: torch.Tensor, biases: list[tuple[torch.Tensor, torch.Tensor]],
               y: torch.Tensor, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``y + ((x @ A.T) * M) @ B.T`` (+ per-row LoRA biases): the union's product, masked per row.

    Args:
        group: The union of the parts (unscaled factors).
        mask: (B, R_union): each row's coefficient for each concatenated rank column.
        biases: ``(lora_bias, per-row coefficient (B,))``.
        y: The output so far; x: the input (ids for an Embedding).
        training: Whether dropout is on.
    """
    if group.dropout and training:
        x = F.dropout(x, group.dropout, True)
    a, b = group.factors(scaled=False)
    if not group.embedding and x.dtype != a.dtype:
        x = x.to(a.dtype)
    xa = group.project(x, a)  # (B, ..., R)
    xa = xa * mask.view(mask.shape[0], *([1] * (xa.dim() - 2)), mask.shape[1])
    delta = F.linear(xa, b)  # (B, ..., out)
    for bias, coef in biases:
        delta = delta + coef.view(-1, *([1] * (delta.dim() - 1))) * bias
    return y + delta.to(y.dtype)
