"""Soft prompts in a mixed-task batch: each row gets its own prompt, or none.

Rows of one batch may run tasks with different prompts (of different
lengths) or no prompt at all. With ``P`` the longest prompt of the batch,
row ``r`` with a prompt of ``n_r`` tokens becomes::

    [ P - n_r padding | its n_r prompt vectors | its L inputs ]

so every row's real inputs sit at the same last ``L`` positions of the
output. The padding is zeros, masked out of attention (``attention_mask``
0 there), and never seen by the row's other positions. So that each row sees
the positions it would see alone (prompt at ``0..n_r-1``, inputs from
``n_r`` on), ``position_ids`` are passed explicitly when the model's forward
takes them (absolute position embeddings, GPT-2 and BERT) and some row is
padded; models without that argument use relative positions (T5), which
the shift does not change. Labels get ``P`` times ``-100`` in front, as with
one prompt. Encoder-decoder models change only the encoder input.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.binding import resolve_module
from adaptlang.runtime.prompt import _cache_length

__all__ = ["prepend_row_prompts"]


def _takes_position_ids(model: Any) -> bool:
    """True when the model's forward has a ``position_ids`` parameter."""
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def prepend_row_prompts(ctrl: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """The root pre-hook's work while rows run different prompts (module docstring).

    Args:
        ctrl: The :class:`~adaptlang.runtime.prompt.PromptController`; ``ctrl.rows``
            holds each row's prompt delta (None: no prompt).
        args, kwargs: The model call.

    Returns:
        The rewritten ``(args, kwargs)``, or None to leave the call alone.

    Raises:
        RuntimeApplyError: A batch whose size differs from the rows', a KV cache, or a mask that is not 2-D.
    """
    rows: list[str | None] = ctrl.rows
    kwargs = dict(kwargs)
    if args:
        if len(args) > len(ctrl._arg_names):
            raise RuntimeApplyError("prompt tuning: too many positional arguments; call the model with keywords")
        kwargs.update(zip(ctrl._arg_names, args))
    if kwargs.get("encoder_outputs") is not None:
        return None  # the encoder already ran (with its prompts)
    input_ids = kwargs.pop("input_ids", None)
    embeds = kwargs.get("inputs_embeds")
    if input_ids is None and embeds is None:
        return None
    named = [r for r in rows if r is not None]
    if _cache_length(kwargs.get("past_key_values")) > 0:
        raise RuntimeApplyError(Diagnostic("prompt tuning does not support decoding with a KV cache",
                                           obj=named[0], hint="call generate(..., use_cache=False)"))
    if embeds is None:
        embeds = resolve_module(ctrl.model, ctrl.embed_paths[named[0]])(input_ids)  # (B, L, D)
    batch, length, dim = embeds.shape
    if batch != len(rows):
        raise RuntimeApplyError(f"per-row prompts were set for {len(rows)} rows; the input has {batch}")
    counts = [0 if name is None else ctrl.parts[name].tokens for name in rows]
    width = max(counts)
    device = embeds.device
    blocks = []
    for name, n in zip(rows, counts):
        pad = embeds.new_zeros(width - n, dim)
        blocks.append(pad if name is None else torch.cat([pad, ctrl.parts[name].weight.to(embeds.dtype)], 0))
    kwargs["inputs_embeds"] = torch.cat([torch.stack(blocks), embeds], dim=1)  # (B, P+L, D)

    real = torch.tensor([[0] * (width - n) + [1] * n for n in counts], device=device)  # (B, P)
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if mask.dim() != 2:
        raise RuntimeApplyError("prompt tuning needs a 2-D attention_mask (batch, length)")
    kwargs["attention_mask"] = torch.cat([real.to(mask.dtype), mask], dim=1)  # (B, P+L)
    types = kwargs.get("token_type_ids")
    if isinstance(types, torch.Tensor):
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], width), types], dim=-1)
    shift = torch.tensor(counts, device=device).unsqueeze(1)  # (B, 1)
    head = (torch.arange(width, device=device).unsqueeze(0) - (width - shift)).clamp_(min=0)  # (B, P)
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor):
        pos = pos.expand(batch, -1) if pos.dim() == 2 else pos
        kwargs["position_ids"] = torch.cat([head.to(pos.dtype), pos + shift.to(pos.dtype)], dim=-1)
    elif min(counts) != width and not ctrl._encoder_decoder and _takes_position_ids(ctrl.model):
        tail = torch.arange(length, device=device).unsqueeze(0) + shift  # (B, L): alone, inputs follow the prompt
        kwargs["position_ids"] = torch.cat([head, tail], dim=-1)  # (B, P+L)
    cache_pos = kwargs.get("cache_position")
    if isinstance(cache_pos, torch.Tensor):
        start = int(cache_pos[0]) if cache_pos.numel() else 0
        kwargs["cache_position"] = torch.arange(start, start + width + length, device=cache_pos.device,
                                                dtype=cache_pos.dtype)
    labels = kwargs.get("labels")
    if (not ctrl._encoder_decoder and isinstance(labels, torch.Tensor) and labels.dim() == 2
            and labels.shape == (batch, length)):
        kwargs["labels"] = torch.cat([labels.new_full((batch, width), -100), labels], dim=1)  # (B, P+L)
    return (), kwargs
