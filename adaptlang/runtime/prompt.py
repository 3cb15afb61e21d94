"""Prompt tuning: trainable virtual tokens prepended to the input embeddings.

The prompt vectors live in a ``ModuleDict`` registered on the root model as
``adaptlang_prompts`` (so ``model.parameters()``, optimisers and the HF
``Trainer`` see them), and a forward pre-hook with kwargs on the root model
rewrites each call while a prompt delta is active:

* ``input_ids`` become ``inputs_embeds`` (through the model's input embedding
  module at the plan's site, wrappers included) and the prompt (B, N, D) is
  prepended;
* ``attention_mask`` gets N ones in front, ``token_type_ids`` N zeros,
  ``position_ids`` / ``cache_position`` are shifted by N behind ``0..N-1``;
* ``labels`` shaped like the input get N ``-100`` in front (causal and masked
  LMs); per-sequence labels (classification) are left alone;
* on encoder-decoder models (T5) only the encoder input changes.

This reproduces PEFT's ``PromptTuningConfig`` forward for default positions
(PEFT drops explicit ``position_ids``/``token_type_ids``; we extend them,
which gives the same result when they are the defaults).
"""

from __future__ import annotations

import copy
import inspect
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.binding import resolve_module

__all__ = ["PROMPT_ATTR", "PromptPart", "PromptController"]

#: Attribute on the root model that holds every prompt delta's vectors.
PROMPT_ATTR = "adaptlang_prompts"

#: ``(controller, prompt, per-row prompts)`` of the current call (``call_scope``), or None.
#: Per context, not per controller: threads (and async tasks) calling one model each see their own.
_CALL_SCOPE: ContextVar[tuple[Any, str | None, list[str | None] | None] | None] = ContextVar(
    "adaptlang_prompt_scope", default=None)


class PromptPart(nn.Module):
    """One prompt delta's virtual token vectors.

    Args:
        tokens: Number of virtual tokens N.
        dim: Embedding width D.
        device: Where the vectors live (the embedding's device).
    """

    def __init__(self, tokens: int, dim: int, device: torch.device | str = "cpu"):
        super().__init__()
        # Kept in fp32 as PEFT does; cast to the embeddings' dtype per call.
        self.weight = nn.Parameter(torch.zeros(tokens, dim, device=device, dtype=torch.float32))  # (N, D)

    @property
    def tokens(self) -> int:
        """Number of virtual tokens."""
        return self.weight.shape[0]

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the trainable parameters by local name (``weight``: (N, D))."""
        return {"weight": self.weight}

    def expand(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Returns the prompt for a batch: (B, N, D) in ``dtype``."""
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def pick_init_ids(token_ids: list[int], tokens: int) -> list[int]:
    """Repeats or truncates token ids to exactly ``tokens`` (PEFT's TEXT init rule)."""
    if not token_ids:
        raise ValueError("the init text tokenises to no tokens")
    reps = math.ceil(tokens / len(token_ids))
    return (list(token_ids) * reps)[:tokens]


def init_prompt(part: PromptPart, site: dict[str, Any], embed: nn.Module, gen: torch.Generator,
                tokenizer: Any, delta: str) -> None:
    """Fills a prompt's vectors as the plan says (``text``, ``vocab`` or ``random``).

    Args:
        part: The prompt to fill.
        site: The plan site (``tokens``, ``init``, ``text``).
        embed: The original input embedding module (no wrappers).
        gen: Seeded generator for ``vocab`` and ``random``.
        tokenizer: Needed for ``text``; called as ``tokenizer(text)["input_ids"]``.
        delta: The delta's name, for errors.

    Raises:
        RuntimeApplyError: ``text`` init without a tokenizer.
    """
    n = part.tokens
    kind = site.get("init", "random")
    with torch.no_grad():
        if kind == "random":
            # nn.Embedding's default (what PEFT's RANDOM init gives): N(0, 1).
            values = torch.randn(part.weight.shape, generator=gen, dtype=torch.float32)  # (N, D)
        else:
            if kind == "text":
                if tokenizer is None:
                    raise RuntimeApplyError(Diagnostic(
                        f"prompt '{delta}' is initialised from text and needs a tokenizer",
                        obj=delta, hint="pass it: adaptlang.apply(model, spec, tokenizer=tok)"))
                ids = pick_init_ids(list(tokenizer(site["text"])["input_ids"]), n)
                ids_t = torch.tensor(ids, dtype=torch.long)
            else:  # vocab: random rows of the vocabulary
                vocab = embed.weight.shape[0]
                ids_t = torch.randint(0, vocab, (n,), generator=gen)
            device = embed.weight.device
            values = embed(ids_t.to(device)).detach().to(torch.float32)  # (N, D)
        part.weight.copy_(values.to(part.weight.device))


def _cache_length(cache: Any) -> int:
    """Returns how many positions a KV cache already holds (0 for none)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


class PromptController:
    """Owns the prompt parts of one adapted model and the hook that uses them.

    Args:
        model: The root model.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.parts: dict[str, PromptPart] = {}
        self.embed_paths: dict[str, str] = {}
        self.active: str | None = None
        self.rows: list[str | None] | None = None  # per-row prompts of a mixed-task batch
        self._handle: Any = None
        self._arg_names: list[str] = []
        self._encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))

    def add(self, delta: str, site: dict[str, Any], gen: torch.Generator, tokenizer: Any = None) -> PromptPart:
        """Creates, initialises and registers one prompt delta.

        The caller undoes a failed ``add`` with :meth:`remove`.
        """
        embed = resolve_module(self.model, site["path"], unwrap=True)
        weight = getattr(embed, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise RuntimeApplyError(Diagnostic(f"prompt '{delta}': '{site['path']}' is not an embedding", obj=delta))
        part = PromptPart(int(site["tokens"]), weight.shape[1], device=weight.device)
        init_prompt(part, site, embed, gen, tokenizer, delta)
        if PROMPT_ATTR not in self.model._modules:
            self.model.add_module(PROMPT_ATTR, nn.ModuleDict())
            self._install_hook()
        self.model._modules[PROMPT_ATTR][delta] = part
        self.parts[delta] = part
        self.embed_paths[delta] = site["path"]
        return part

    def _install_hook(self) -> None:
        """Registers the root pre-hook (once)."""
        try:
            params = inspect.signature(self.model.forward).parameters.values()
            self._arg_names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):  # builtins or odd callables: keyword calls only
            self._arg_names = []
        self._handle = self.model.register_forward_pre_hook(self._rewrite_call, with_kwargs=True)

    def set_rows(self, rows: list[str | None] | None) -> None:
        """Gives each batch row its own prompt delta (None: none) until ``set_rows(None)``.

        See :mod:`adaptlang.runtime.prompt_rows`.
        """
        self.rows = None if rows is None else list(rows)

    def set_active(self, delta: str | None) -> None:
        """Makes ``delta`` the prompt prepended to every call (None: no prompt)."""
        self.active = delta

    @contextmanager
    def call_scope(self, prompt: str | None, rows: list[str | None] | None) -> Iterator[None]:
        """Model calls made in the current context (this thread, this task) use ``prompt``, or per-row ``rows``.

        Unlike :meth:`set_active` / :meth:`set_rows`, nothing shared changes:
        concurrent calls in other contexts keep their own prompts.

        Args:
            prompt: The prompt delta for every row (None: none); ignored when ``rows`` is given.
            rows: Per batch row, its prompt delta (None: none), or None.
        """
        token = _CALL_SCOPE.set((self, prompt, None if rows is None else list(rows)))
        try:
            yield
        finally:
            _CALL_SCOPE.reset(token)

    def remove(self) -> None:
        """Removes the hook and the ``adaptlang_prompts`` module; forgets every part."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if PROMPT_ATTR in self.model._modules:
            del self.model._modules[PROMPT_ATTR]
        self.parts.clear()
        self.embed_paths.clear()
        self.active = None

    def _rewrite_call(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """The forward pre-hook: prepends the active prompt (or each row's) to the call's inputs."""
        scope = _CALL_SCOPE.get()
        if scope is not None and scope[0] is self:  # a call_scope of this model (not of another one)
            _, active, rows = scope
        else:
            active, rows = self.active, self.rows
        if rows is not None:
            from adaptlang.runtime.prompt_rows import prepend_row_prompts  # it imports this module

            view = self
            if rows is not self.rows:  # prepend_row_prompts reads ctrl.rows: hand it a view with this call's
                view = copy.copy(self)
                view.rows = rows
            return prepend_row_prompts(view, args, kwargs)
        if active is None:
            return None
        kwargs = dict(kwargs)
        if args:
            if len(args) > len(self._arg_names):
                raise RuntimeApplyError("prompt tuning: too many positional arguments; call the model with keywords")
            kwargs.update(zip(self._arg_names, args))
        if kwargs.get("encoder_outputs") is not None:
            return None  # the encoder already ran (with its prompt); the decoder is untouched
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if input_ids is None and embeds is None:
            return None  # nothing to prepend to (e.g. a decoder-only step)
        if _cache_length(kwargs.get("past_key_values")) > 0:
            raise RuntimeApplyError(Diagnostic(
                "prompt tuning does not support decoding with a KV cache",
                obj=active, hint="call generate(..., use_cache=False)"))
        if embeds is None:
            embed = resolve_module(self.model, self.embed_paths[active])
            embeds = embed(input_ids)  # (B, L, D)
        part = self.parts[active]
        batch, length, n = embeds.shape[0], embeds.shape[1], part.tokens
        kwargs["inputs_embeds"] = torch.cat([part.expand(batch, embeds.dtype), embeds], dim=1)  # (B, N+L, D)
        self._extend_extras(kwargs, batch, length, n)
        return (), kwargs

    def _extend_extras(self, kwargs: dict, batch: int, length: int, n: int) -> None:
        """Extends masks, type ids, positions and labels by the N prompt positions."""
        def prefix(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> None:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                kwargs[name] = torch.cat([make(value), value], dim=-1)

        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() != 2:
            raise RuntimeApplyError("prompt tuning needs a 2-D attention_mask (batch, length)")
        prefix("attention_mask", lambda m: m.new_ones(m.shape[0], n))  # (B, N)
        prefix("token_type_ids", lambda t: t.new_zeros(t.shape[0], n))  # (B, N)
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor):
            head = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(*pos.shape[:-1], n)
            kwargs["position_ids"] = torch.cat([head, pos + n], dim=-1)  # (B, N+L)
        cache_pos = kwargs.get("cache_position")
        if isinstance(cache_pos, torch.Tensor):
            start = int(cache_pos[0]) if cache_pos.numel() else 0
            kwargs["cache_position"] = torch.arange(
                start, start + n + length, device=cache_pos.device, dtype=cache_pos.dtype)  # (N+L,)
        labels = kwargs.get("labels")
        if (not self._encoder_decoder and isinstance(labels, torch.Tensor) and labels.dim() == 2
                and labels.shape == (batch, length)):
            kwargs["labels"] = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)  # (B, N+L)
