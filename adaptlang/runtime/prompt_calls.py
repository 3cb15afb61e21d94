"""Soft prompts in model calls: the first call of a sequence gets the prompt in front; cached steps go on behind it.

A call that starts a sequence (no KV cache, or an empty one) gets each row's
prompt vectors in front of its input embeddings (:func:`prepend`). With
``P`` the longest prompt of the call and ``n_r`` row ``r``'s, row ``r``
becomes ``[P - n_r masked zeros | its n_r prompt vectors | its L inputs]``
(one prompt for every row: no padding), and the call's extras follow:

* ``attention_mask`` gets the prefix mask (B, P) in front (0 on padding);
* ``token_type_ids`` P zeros; ``labels`` shaped like the input P ``-100``
  (decoder-only models);
* ``position_ids`` become ``head, pos + n_r`` with ``head`` the row's prompt
  positions ``0..n_r-1`` (right-aligned); when rows are padded and the model
  takes ``position_ids`` they are passed even if the caller gave none, so each
  row sees the positions it would see alone;
* ``cache_position`` (older transformers) covers the P + L positions.

The KV cache of such a call now holds the prompt. A **decoding step** (the
cache already holds ``past`` positions) adds no prompt: it only brings the
caller's view of the sequence, which knows nothing of the prompt, in line
with the cache (:func:`continue_step`): the mask gets the prefix mask in
front when it covers ``past - P + L`` positions, positions move by ``n_r``,
``cache_position`` is ``past..past+L-1``. That is what the call without a
cache computes over the whole sequence, so ``generate()`` gives the same
tokens and logits with and without a cache (greedy, beams, left padding).

A step must follow on from what the cache holds: its mask covers the
caller's positions only, and its positions start where the cached inputs
end (:class:`CacheState`). ``generate()`` handed a cache from an earlier
``generate()`` call fails that check (it counts the prompt's positions as
its own tokens, so it would skip or repeat input tokens) and is refused;
rolling a cache back (assisted decoding) passes.

Which cache holds which prompt is recorded against the cache object itself
(:data:`MARKS`), found among the call's arguments by what it is (an object
with ``get_seq_length``), not by a keyword name, which transformers has
renamed (``past_key_values`` became ``cache``). A cache that holds positions
but no record of ours (filled without the prompt), or another task's prompt,
is refused: continuing it would silently mix two inputs.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from adaptlang.errors import Diagnostic, RuntimeApplyError

__all__ = ["MARKS", "Layout", "Marks", "cache_length", "continue_step", "expand_rows", "find_cache", "prepend"]


@dataclass(frozen=True)
class Layout:
    """Where the prompt positions of one call sit.

    Attributes:
        names: Per row, the prompt delta (None: no prompt); length B.
        counts: (B,) long: prompt tokens of each row (``n_r``).
        mask: (B, P) long: 1 on prompt vectors, 0 on the padding in front of shorter prompts.
        width: ``P``, the longest prompt.
        explicit: Positions must be passed explicitly (rows differ and the model takes ``position_ids``).
    """

    names: tuple[str | None, ...]
    counts: torch.Tensor
    mask: torch.Tensor
    width: int
    explicit: bool

    @property
    def padded(self) -> bool:
        """True when some row's prompt is shorter than ``P`` (its padding must be masked)."""
        return bool((self.counts != self.width).any())

    def for_batch(self, batch: int) -> "Layout":
        """Returns this layout for a batch of ``batch`` rows.

        ``generate`` repeats each row ``k`` times for beams or several
        returned sequences (``repeat_interleave``, beams of one row stay
        together), so a multiple of the rows is expanded the same way.

        Raises:
            RuntimeApplyError: A batch size that is not a multiple of the rows.
        """
        rows = len(self.names)
        if batch == rows:
            return self
        if batch % rows:
            raise RuntimeApplyError(Diagnostic(
                f"prompts were laid out for {rows} rows; this call has {batch}", obj="prompt",
                hint="give one task per batch row"))
        k = batch // rows
        names = tuple(n for n in self.names for _ in range(k))
        return Layout(names, self.counts.repeat_interleave(k), self.mask.repeat_interleave(k, 0),
                      self.width, self.explicit)

    def positions(self, offset: torch.Tensor | int, length: int, device: torch.device) -> torch.Tensor:
        """Returns row positions ``offset + i + n_r`` for ``i < length``: (B, length) long."""
        return (torch.arange(length, device=device).unsqueeze(0) + offset
                + self.counts.to(device).unsqueeze(1))  # (B, L)

    def head(self, device: torch.device) -> torch.Tensor:
        """Returns the prompt positions, right-aligned per row: (B, P) long (padding clamps to 0)."""
        shift = self.counts.to(device).unsqueeze(1)  # (B, 1)
        return (torch.arange(self.width, device=device).unsqueeze(0) - (self.width - shift)).clamp_(min=0)


@dataclass
class CacheState:
    """What a KV cache filled by a prompted call holds, for the decoding steps that go on from it.

    Attributes:
        layout: The prompt layout in the cache's first ``P`` positions.
        offsets: (B,) long or None: per row, the caller's position of its next token minus the caller's
            positions in the cache (``-pads`` with generate()'s ``cumsum(mask) - 1`` positions); None when
            the first call passed no ``position_ids`` (nothing to check against).
    """

    layout: Layout
    offsets: torch.Tensor | None = None

    @staticmethod
    def after_first_call(layout: Layout, position_ids: Any, length: int) -> "CacheState":
        """The state after a first call of ``length`` inputs with the caller's ``position_ids`` (or None)."""
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() > 2:
            return CacheState(layout)
        pos = _batched_positions(position_ids, len(layout.names))
        return CacheState(layout, (pos[:, -1] + 1 - length).to("cpu", torch.long))  # (B,)


class Marks:
    """Which prompt layout a cache (or an encoder output) holds, kept against the object itself.

    Keyed by identity with a weak reference, so that unhashable objects
    (transformers' ``ModelOutput`` is a dict) can be marked and a mark goes
    away with its object. Safe to use from several threads.
    """

    def __init__(self) -> None:
        self._marks: dict[int, tuple[weakref.ref, Layout]] = {}
        self._lock = threading.Lock()

    def put(self, obj: Any, layout: Layout) -> None:
        """Records ``layout`` for ``obj`` (objects without weak references are skipped)."""
        key = id(obj)

        def forget(_: Any, key: int = key) -> None:
            with self._lock:
                entry = self._marks.get(key)
                if entry is not None and entry[0]() is None:
                    del self._marks[key]

        try:
            ref = weakref.ref(obj, forget)
        except TypeError:
            return
        with self._lock:
            self._marks[key] = (ref, layout)

    def get(self, obj: Any) -> Layout | None:
        """Returns the layout recorded for ``obj``, or None."""
        entry = self._marks.get(id(obj))
        if entry is None or entry[0]() is not obj:
            return None
        return entry[1]


#: Caches and encoder outputs that hold prompts, with their layouts.
MARKS = Marks()


def expand_rows(rows: tuple[str | None, ...], batch: int) -> tuple[str | None, ...]:
    """Returns per-row names for a batch of ``batch`` rows (see :meth:`Layout.for_batch`).

    Raises:
        RuntimeApplyError: A batch size that is not a multiple of the rows.
    """
    if len(rows) == batch:
        return tuple(rows)
    if not rows or batch % len(rows):
        raise RuntimeApplyError(Diagnostic(
            f"per-row prompts were set for {len(rows)} rows; the input has {batch}", obj="tasks",
            hint="give one task per batch row"))
    k = batch // len(rows)
    return tuple(n for n in rows for _ in range(k))


def find_cache(kwargs: dict[str, Any]) -> Any:
    """Returns the KV cache among a call's arguments (an object with ``get_seq_length``), or None."""
    for value in kwargs.values():
        if value is not None and callable(getattr(value, "get_seq_length", None)):
            return value
    return None


def cache_length(cache: Any) -> int:
    """Returns how many positions a KV cache holds (0 for none)."""
    return 0 if cache is None else int(cache.get_seq_length())


def _check_mask(mask: torch.Tensor) -> None:
    """Refuses masks the prompt cannot be put in front of (4-D masks that ``generate`` builds for static caches)."""
    if mask.dim() != 2:
        raise RuntimeApplyError(Diagnostic(
            f"prompt tuning needs a 2-D attention_mask (batch, length); this call has a {mask.dim()}-D one",
            obj="attention_mask",
            hint="generate() builds 4-D masks for static caches: use the default dynamic cache with soft prompts"))


def _batched_positions(pos: torch.Tensor, batch: int) -> torch.Tensor:
    """Returns position ids as (B, L) (they may come as (L,) or (1, L))."""
    if pos.dim() > 2:
        raise RuntimeApplyError("prompt tuning supports 1-D positions per row, not multi-axis position_ids")
    return pos.reshape(-1, pos.shape[-1]).expand(batch, -1)


def prepend(kwargs: dict[str, Any], embeds: torch.Tensor, prompt: torch.Tensor, layout: Layout, *,
            labels: bool) -> None:
    """Puts the prompt in front of a call's inputs and extends its extras (module docstring), in place.

    Args:
        kwargs: The call's keyword arguments (``inputs_embeds`` is set).
        embeds: The input embeddings (B, L, D).
        prompt: The prompt block (B, P, D), padding included.
        layout: Its layout (B rows).
        labels: Extend token labels too (decoder-only models).

    Raises:
        RuntimeApplyError: A mask that is not 2-D or does not fit the input.
    """
    batch, length = embeds.shape[0], embeds.shape[1]
    width, device = layout.width, embeds.device
    kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)  # (B, P+L, D)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        _check_mask(mask)
        if mask.shape[-1] == length:
            kwargs["attention_mask"] = torch.cat([layout.mask.to(mask), mask], dim=1)  # (B, P+L)
        elif mask.shape[-1] != width + length:  # P + L: the caller (an encoder-decoder's root) extended it
            raise RuntimeApplyError(f"attention_mask covers {mask.shape[-1]} positions; the input has {length}")
    elif layout.padded:
        kwargs["attention_mask"] = torch.cat(
            [layout.mask.to(device), torch.ones(batch, length, dtype=torch.long, device=device)], dim=1)
    types = kwargs.get("token_type_ids")
    if isinstance(types, torch.Tensor) and types.shape[-1] == length:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, width), types], dim=-1)  # (B, P+L)
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor):
        pos = _batched_positions(pos, batch)
        shift = layout.counts.to(pos).unsqueeze(1)  # (B, 1)
        kwargs["position_ids"] = torch.cat([layout.head(device).to(pos), pos + shift], dim=-1)  # (B, P+L)
    elif layout.explicit and layout.padded:
        kwargs["position_ids"] = torch.cat([layout.head(device), layout.positions(0, length, device)], dim=-1)
    cache_pos = kwargs.get("cache_position")
    if isinstance(cache_pos, torch.Tensor):
        start = int(cache_pos[0]) if cache_pos.numel() else 0
        kwargs["cache_position"] = torch.arange(start, start + width + length, device=cache_pos.device,
                                                dtype=cache_pos.dtype)  # (P+L,)
    target = kwargs.get("labels")
    if labels and isinstance(target, torch.Tensor) and target.dim() == 2 and target.shape == (batch, length):
        kwargs["labels"] = torch.cat([target.new_full((batch, width), -100), target], dim=1)  # (B, P+L)


def _check_follows(state: CacheState, pos: torch.Tensor, seen: int, batch: int, width: int) -> None:
    """Refuses a step whose first positions do not follow the ``seen`` caller positions the cache holds.

    Why: ``generate()`` given a cache from an earlier call counts the cache's
    prompt positions as its own tokens, so it feeds the wrong slice of the
    input (skipping tokens, or feeding cached ones again); its positions then
    start ``P`` too late, or at 0. Rolling the cache back (assisted decoding
    crops it) moves positions and cache together and passes.
    """
    if state.offsets is None or pos.dim() != 2 or pos.shape[-1] == 0:
        return
    offsets = state.offsets
    if offsets.shape[0] != batch:
        if batch % offsets.shape[0]:
            return
        offsets = offsets.repeat_interleave(batch // offsets.shape[0])
    expected = seen + offsets.to(pos.device)  # (B,)
    if not torch.equal(pos[:, 0].to(expected.dtype), expected):
        raise RuntimeApplyError(Diagnostic(
            f"this call's positions start at {pos[:, 0].tolist()}, but the KV cache holds a {width}-token prompt "
            f"and inputs up to position {(expected - 1).tolist()}: the call does not follow on from the cache",
            obj="prompt",
            hint="generate() cannot go on from a cache that an earlier generate() call filled with a prompt "
                 "(it counts the prompt's positions as input tokens): pass the whole sequence without the cache"))


def continue_step(kwargs: dict[str, Any], state: CacheState, past: int, batch: int, length: int,
                  device: torch.device) -> None:
    """Lines a decoding step's extras up with a cache that holds the prompt (module docstring), in place.

    Args:
        kwargs: The call's keyword arguments.
        state: What the cache holds (:class:`CacheState`).
        past: Positions the cache holds (the prompt's ``P`` included).
        batch, length: Rows and new positions of this call.
        device: Where the new tensors go.

    Raises:
        RuntimeApplyError: A cache that holds fewer positions than its prompt, or a mask or
            positions that do not follow on from the inputs the cache holds.
    """
    layout = state.layout.for_batch(batch)
    width = layout.width
    seen = past - width  # positions of the caller's own sequence already in the cache
    if seen < 0:
        raise RuntimeApplyError(Diagnostic(
            f"the KV cache holds {past} positions, fewer than its {width}-token prompt: it was cropped by a "
            "count that leaves the prompt out", obj="prompt",
            hint="start the sequence again without the cache; for assisted generation, give the assistant "
                 "model no prompt delta (its cache is cropped by the caller's count of tokens)"))
    mask = kwargs.get("attention_mask")
    if mask is not None:
        _check_mask(mask)
        if mask.shape[-1] != seen + length:
            # Only the caller's own positions count: a mask over the whole cache (past + L) is what
            # generate() passes when it reuses a cache from an earlier call, having taken the prompt's
            # positions for its own and so skipped (or repeated) input tokens. Refused, never guessed.
            raise RuntimeApplyError(Diagnostic(
                f"attention_mask covers {mask.shape[-1]} positions; the KV cache holds a {width}-token prompt "
                f"and {seen} inputs, and the call adds {length}", obj="attention_mask",
                hint=f"pass a mask over the inputs only ({seen + length}); generate() cannot go on from a cache "
                     "an earlier generate() call filled with a prompt: pass the whole sequence without the cache",
                notes=("transformers counts the cache's prompt positions as the caller's tokens when it reuses a "
                       "cache, so it would feed the wrong input tokens",)))
        kwargs["attention_mask"] = torch.cat([layout.mask.to(mask), mask], dim=1)  # (B, past+L)
    elif layout.padded:
        kwargs["attention_mask"] = torch.cat(
            [layout.mask.to(device), torch.ones(batch, seen + length, dtype=torch.long, device=device)], dim=1)
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor):
        pos = _batched_positions(pos, batch)
        _check_follows(state, pos, seen, batch, width)
        kwargs["position_ids"] = pos + layout.counts.to(pos).unsqueeze(1)  # (B, L)
    elif layout.explicit and layout.padded:
        kwargs["position_ids"] = layout.positions(seen, length, device)  # (B, L)
    cache_pos = kwargs.get("cache_position")
    if isinstance(cache_pos, torch.Tensor):
        kwargs["cache_position"] = torch.arange(past, past + length, device=cache_pos.device,
                                                dtype=cache_pos.dtype)  # (L,)
    types = kwargs.get("token_type_ids")
    if isinstance(types, torch.Tensor) and types.shape[-1] == seen + length:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, width), types], dim=-1)


def align_last_token(kwargs: dict[str, Any], input_ids: torch.Tensor, pad_id: int) -> None:
    """Rolls right-padded rows so that each row's last non-pad token ends the row, in place.

    Why: a decoder-only ``*ForSequenceClassification`` model pools the
    rightmost token of ``input_ids`` that is not ``pad_token_id``; once the
    prompt hook has turned ``input_ids`` into ``inputs_embeds`` it can only
    pool the last position, a pad on a right-padded row. Rolling the trailing
    pads to the front (masked out, positions carried along) puts the token
    HF would pool at the last position and changes nothing else a row computes.

    Args:
        kwargs: The rewritten call (``inputs_embeds`` (B, P+L, D) with the prompt in front).
        input_ids: The call's ids (B, L).
        pad_id: The model's ``pad_token_id``.
    """
    embeds = kwargs["inputs_embeds"]
    batch, total, dim = embeds.shape
    device = embeds.device
    width = total - input_ids.shape[1]
    index = torch.arange(input_ids.shape[1], device=device)
    last = (index * (input_ids != pad_id)).argmax(-1) + width  # (B,): HF's pooled position, in the full row
    shift = total - 1 - last  # (B,)
    if not bool(shift.any()):
        return
    columns = torch.arange(total, device=device).unsqueeze(0)  # (1, T)
    source = (columns - shift.unsqueeze(1)) % total  # (B, T): rolled[:, t] = row[:, source[:, t]]
    kwargs["inputs_embeds"] = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, dim))  # (B, T, D)
    mask = kwargs.get("attention_mask")
    mask = torch.ones(batch, total, dtype=torch.long, device=device) if mask is None else mask
    kwargs["attention_mask"] = mask.gather(1, source).masked_fill(columns < shift.unsqueeze(1), 0)  # (B, T)
    pos = kwargs.get("position_ids")
    pos = columns.expand(batch, -1) if pos is None else _batched_positions(pos, batch)
    kwargs["position_ids"] = pos.gather(1, source)  # (B, T): every token keeps its position
    types = kwargs.get("token_type_ids")
    if isinstance(types, torch.Tensor) and types.shape[-1] == total:
        kwargs["token_type_ids"] = types.gather(1, source)
