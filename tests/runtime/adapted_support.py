"""Helpers shared by the ``Adapted`` tests: seeded tiny Llamas, delta values that change outputs."""

from __future__ import annotations

import torch
from torch import nn

from adaptlang.plan.models import load_model

__all__ = ["logits", "randomize", "tiny_llama"]


def tiny_llama(seed: int = 0) -> nn.Module:
    """The ``tiny-llama`` preset with random weights drawn from ``seed`` (equal seeds: equal models)."""
    torch.manual_seed(seed)
    model, _ = load_model("tiny-llama", device="cpu")
    return model


def randomize(adapted, *deltas: str, seed: int = 3) -> None:
    """Random values in the deltas' parameters (B and ``up`` nonzero), so they change outputs.

    Vectors that start at one (IA3, DoRA magnitudes) stay near one.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for delta in deltas:
            for key, p in adapted.delta_parameters(delta).items():
                centre = 1.0 if key.endswith(("/ia3_l", "/magnitude")) else 0.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=gen))


def logits(adapted, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return adapted(**batch).logits
