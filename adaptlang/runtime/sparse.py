"""Sparse fine-tuning: only ``k`` chosen entries of an existing parameter train.

The delta is stored sparse: ``indices`` (k,), a buffer of positions in the
flattened parameter, sorted, and ``values`` (k,), the trainable change at
those positions (zero at the start, so a fresh delta changes nothing). The
site uses ``W + scatter(w * values)`` functionally (``index_add``), so the
frozen parameter is never written and autograd only reaches the k values.

Positions are chosen once, at apply time:

* ``magnitude``: the k entries of largest ``|W|`` (ties: lower position
  first, a stable sort, so the choice is the same on every machine);
* ``random``: k distinct positions drawn from a generator seeded by the
  site's ``seed`` and its path (independent of the other deltas).

Merging (:mod:`adaptlang.runtime.merging`) adds the values into the
parameter and keeps the k entries it overwrote (with their positions), so
unmerging puts back exactly the original bits, whatever the ``keep`` mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.binding import derive_generator

__all__ = ["SELECTIONS", "SparsePart", "build_sparse_part", "count_entries", "select_indices"]

SELECTIONS = ("magnitude", "random")


def count_entries(density: float, numel: int) -> int:
    """Returns ``k = max(1, round(density * numel))`` (the plan's rule)."""
    return max(1, int(round(float(density) * numel)))


def select_indices(values: torch.Tensor, k: int, select: str, generator: torch.Generator | None) -> torch.Tensor:
    """Returns the k positions (sorted, int64) of the flattened ``values`` to train.

    Args:
        values: The parameter's current values.
        k: How many entries.
        select: ``magnitude`` or ``random``.
        generator: For ``random``.
    """
    flat = values.detach().reshape(-1)
    if not 1 <= k <= flat.numel():
        raise RuntimeApplyError(f"cannot choose {k} entries of a parameter with {flat.numel()}")
    if select == "magnitude":
        order = torch.sort(flat.abs().float().cpu(), descending=True, stable=True).indices
        chosen = order[:k]
    elif select == "random":
        chosen = torch.randperm(flat.numel(), generator=generator)[:k]
    else:
        raise RuntimeApplyError(Diagnostic(f"unknown sparse selection '{select}'",
                                           hint=did_you_mean(select, SELECTIONS)))
    return torch.sort(chosen).values.to(device=values.device, dtype=torch.long)


class SparsePart(nn.Module):
    """One sparse delta on one parameter.

    Args:
        param: The parameter's local name in its module (``weight``).
        shape: Its shape.
        indices: The chosen positions in the flattened parameter (k,).
        dtype: Dtype of the trainable values.
    """

    kind = "sparse"

    def __init__(self, param: str, shape: tuple[int, ...], indices: torch.Tensor,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.param = param
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("indices", indices.to(torch.long).clone())  # (k,)
        self.values = nn.Parameter(torch.zeros(indices.numel(), dtype=dtype, device=indices.device))  # (k,)

    @property
    def k(self) -> int:
        """Number of trained entries."""
        return self.values.numel()

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the trainable parameters by local name (``values``: (k,))."""
        return {"values": self.values}

    def adapter_buffers(self) -> dict[str, torch.Tensor]:
        """Returns the non-trainable state a bundle must keep by local name (``indices``: (k,))."""
        return {"indices": self.indices}

    def apply_to(self, tensor: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Returns ``tensor + scatter(weight * values)`` without writing ``tensor``.

        Args:
            tensor: The parameter's values (this shape).
            weight: The task weight.
        """
        values = self.values if weight == 1.0 else self.values * weight
        flat = tensor.reshape(-1).index_add(0, self.indices, values.to(tensor.dtype))
        return flat.view(tensor.shape)

    def dense(self, weight: float = 1.0) -> torch.Tensor:
        """Returns the delta as a dense tensor of the parameter's shape."""
        return self.apply_to(torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device), weight)

    def extra_repr(self) -> str:
        return f"param={self.param}, shape={self.shape}, k={self.k}"


def build_sparse_part(site: dict[str, Any], tensor: torch.Tensor, generator: torch.Generator | None) -> SparsePart:
    """Creates the sparse part a plan site describes, choosing its entries of ``tensor``.

    Args:
        site: The plan site (``path``, ``param``, ``shape``, ``k`` or ``density``, ``select``, ``seed``).
        tensor: The parameter's current values (dequantized if the base is quantized).
        generator: Used for ``random`` when the site has no ``seed``.

    Raises:
        RuntimeApplyError: A shape that differs from the plan's, an unknown selection, or a
            parameter on the meta device (no values to choose from).
    """
    if tensor.is_meta:
        # magnitude reads |W|. random needs only the shape, but its positions would sit in a meta
        # buffer that to_empty() leaves unset and no checkpoint holds: one rule for both.
        raise RuntimeApplyError(Diagnostic(
            f"sparse deltas choose their entries from the values of '{site.get('param', 'weight')}', and a model "
            "on the meta device has none", obj=site.get("path"),
            hint="apply sparse deltas to a model with its weights loaded (before sharding it); the meta-device "
                 "recipe (README, 'Training on several devices') supports lora, ia3, adapter, prompt and tune"))
    shape = tuple(tensor.shape)
    if "shape" in site and tuple(site["shape"]) != shape:
        raise RuntimeApplyError(
            f"parameter '{site.get('param')}' has shape {shape}, the plan says {tuple(site['shape'])}")
    k = int(site["k"]) if "k" in site else count_entries(site.get("density", 0.005), tensor.numel())
    if "seed" in site:
        # The site's own seed (plus its path) decides random positions, as the spec says.
        generator = derive_generator(int(site["seed"]), "sparse", site.get("path", ""), site.get("param", ""))
    indices = select_indices(tensor, k, site.get("select", "magnitude"), generator)
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return SparsePart(site.get("param", "weight"), shape, indices, dtype=dtype)
