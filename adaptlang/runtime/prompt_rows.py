"""The prompt block of one call: every row's prompt, right-aligned, padded in front to the longest.

Rows of one batch may run tasks with different prompts (of different
lengths) or no prompt at all (mixed-task batches). With ``P`` the longest
prompt of the batch, row ``r`` with a prompt of ``n_r`` tokens gets::

    [ P - n_r padding | its n_r prompt vectors ]

in front of its inputs, so every row's real inputs sit at the same last
``L`` positions. The padding is zeros, masked out of attention, and never
seen by the row's other positions; so that each row sees the positions it
would see alone, positions are passed explicitly when the model's forward
takes ``position_ids`` (absolute position embeddings, GPT-2 and BERT) and
some row is padded (:mod:`adaptlang.runtime.prompt_calls`). Models without
that argument use relative positions (T5), which the shift does not change.
When every row has the same prompt the block is that prompt, expanded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from adaptlang.runtime.prompt_calls import Layout

__all__ = ["build_layout", "prompt_block", "takes_position_ids"]


def takes_position_ids(module: Any) -> bool:
    """True when the module's forward has a ``position_ids`` parameter."""
    try:
        return "position_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def build_layout(names: tuple[str | None, ...], tokens: dict[str, int], explicit_positions: bool) -> Layout:
    """Returns the layout of rows whose prompts are ``names`` (None: no prompt).

    Args:
        names: Per row, the prompt delta.
        tokens: Prompt delta -> its number of tokens.
        explicit_positions: The model takes ``position_ids`` (and is not an encoder-decoder).
    """
    counts = [0 if name is None else tokens[name] for name in names]
    width = max(counts)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in counts], dtype=torch.long)  # (B, P)
    return Layout(tuple(names), torch.tensor(counts, dtype=torch.long), mask.reshape(len(names), width),
                  width, explicit_positions and min(counts) != width)


def prompt_block(parts: dict[str, Any], layout: Layout, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Returns the rows' prompt vectors, right-aligned and padded in front: (B, P, D) in ``dtype``.

    Args:
        parts: Prompt delta -> its :class:`~adaptlang.runtime.prompt.PromptPart`.
        layout: The rows' layout.
        dtype, device: Those of the input embeddings.
    """
    names = layout.names
    first = names[0]
    if first is not None and all(name == first for name in names):
        return parts[first](len(names), dtype).to(device)  # (B, N, D): one prompt for all
    dim = next(parts[n] for n in names if n is not None).dim
    # Each prompt through its module call, once (ZeRO-3 gathers a module's parameters around its call).
    vectors = {name: parts[name](1, dtype)[0].to(device) for name in set(names) if name is not None}  # (N, D)
    blocks = []
    for name, n in zip(names, layout.counts.tolist()):
        pad = torch.zeros(layout.width - n, dim, dtype=dtype, device=device)
        blocks.append(pad if name is None else torch.cat([pad, vectors[name]], 0))
    return torch.stack(blocks)  # (B, P, D)
