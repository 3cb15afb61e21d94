"""Prompt tuning: trainable virtual tokens prepended to the input embeddings.

The prompt vectors live in a ``ModuleDict`` registered on the root model as
``adaptlang_prompts`` (so ``model.parameters()``, optimisers and the HF
``Trainer`` see them), and forward hooks rewrite each call while a prompt
delta is active (:mod:`adaptlang.runtime.prompt_calls` has the rules):

* ``input_ids`` become ``inputs_embeds`` (through the model's input embedding
  module at the plan's site, wrappers included) and the prompt (B, N, D) is
  prepended;
* ``attention_mask`` gets N ones in front, ``token_type_ids`` N zeros,
  ``position_ids`` / ``cache_position`` are shifted by N behind ``0..N-1``;
* ``labels`` shaped like the input get N ``-100`` in front (causal and masked
  LMs); per-sequence labels (classification) are left alone;
* decoding with a KV cache: the prompt enters the cache once, with the first
  call; later steps only shift masks and positions to match, so
  ``generate()`` gives the same tokens with and without the cache;
* on encoder-decoder models (T5) the encoder's input gets the prompt (also
  when ``generate()`` runs the encoder directly) and the decoder's
  cross-attention mask covers it.

This reproduces PEFT's ``PromptTuningConfig`` forward for default positions
(PEFT drops explicit ``position_ids``/``token_type_ids``; we extend them,
which gives the same result when they are the defaults).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Any, Iterator

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.binding import resolve_module
from adaptlang.runtime.prompt_parts import PromptPart, init_prompt
from adaptlang.runtime.prompt_calls import (
    MARKS, CacheState, Layout, align_last_token, cache_length, continue_step, expand_rows, find_cache, prepend,
)
from adaptlang.runtime.prompt_rows import build_layout, prompt_block, takes_position_ids

__all__ = ["PROMPT_ATTR", "PromptPart", "PromptController"]

#: Attribute on the root model that holds every prompt delta's vectors.
PROMPT_ATTR = "adaptlang_prompts"


#: The prompt choice of the calls made in the current context (see :meth:`PromptController.call_scope`):
#: ``(controller, prompt, rows)``, or None.
_CALL: contextvars.ContextVar[tuple[Any, str | None, tuple[str | None, ...] | None] | None] = \
    contextvars.ContextVar("adaptlang_prompt_call", default=None)
#: Layout of the call now running in this context, from the root's pre-hook to its forward hook.
_RUNNING: contextvars.ContextVar[Any] = contextvars.ContextVar("adaptlang_prompt_running", default=None)


class PromptController:
    """Owns the prompt parts of one adapted model and the hooks that use them.

    Decoder-only models get a pre-hook and a forward hook on the root; an
    encoder-decoder model (T5) gets them on its encoder (``get_encoder()``),
    where ``generate()`` runs it directly, plus a root pre-hook that extends
    the mask the decoder's cross-attention uses. What the hooks do is in
    :mod:`adaptlang.runtime.prompt_calls`.

    Args:
        model: The root model.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.parts: dict[str, PromptPart] = {}
        self.embed_paths: dict[str, str] = {}
        self.active: str | None = None
        self.rows: list[str | None] | None = None  # per-row prompts of a mixed-task batch
        self._handles: list[Any] = []
        self._layouts: dict[tuple[str | None, ...], Layout] = {}  # per-row prompt names -> layout
        self._arg_names: dict[int, list[str]] = {}
        self._encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self._explicit_positions = not self._encoder_decoder and takes_position_ids(model)
        self._max_positions = absolute_position_limit(getattr(model, "config", None))
        # Decoder-only classifiers pool the last non-pad token of input_ids (see align_last_token).
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self._pool_pad = (pad if self._explicit_positions and isinstance(pad, int)
                          and type(model).__name__.endswith("ForSequenceClassification") else None)

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
            self._install_hooks()
        self.model._modules[PROMPT_ATTR][delta] = part
        self.parts[delta] = part
        self.embed_paths[delta] = site["path"]
        return part

    def _install_hooks(self) -> None:
        """Registers the hooks (once): on the root, and on the encoder of an encoder-decoder model."""
        root = self.model
        if self._encoder_decoder:
            encoder = root.get_encoder() if callable(getattr(root, "get_encoder", None)) else None
            if not isinstance(encoder, nn.Module) or encoder is root:
                raise RuntimeApplyError(Diagnostic(
                    f"prompt tuning: cannot find the encoder of {type(root).__name__}", obj=type(root).__name__,
                    hint="encoder-decoder models need get_encoder()"))
            self._remember_args(encoder)
            self._handles.append(encoder.register_forward_pre_hook(self._on_encoder, with_kwargs=True))
            self._handles.append(encoder.register_forward_hook(self._after_encoder))
        self._remember_args(root)
        self._handles.append(root.register_forward_pre_hook(self._on_root, with_kwargs=True))
        if not self._encoder_decoder:
            self._handles.append(root.register_forward_hook(self._after_root, always_call=True))

    def _remember_args(self, module: nn.Module) -> None:
        """Keeps the names of ``module.forward``'s positional parameters (to read positional calls)."""
        try:
            params = inspect.signature(module.forward).parameters.values()
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):  # builtins or odd callables: keyword calls only
            names = []
        self._arg_names[id(module)] = names

    # ------------------------------------------------------------- choosing
    def set_rows(self, rows: list[str | None] | None) -> None:
        """Gives each batch row its own prompt delta (None: none) until ``set_rows(None)``.

        This changes the model for every caller; per-call choices use :meth:`call_scope`.
        """
        self.rows = None if rows is None else list(rows)

    def set_active(self, delta: str | None) -> None:
        """Makes ``delta`` the prompt prepended to every call (None: no prompt)."""
        self.active = delta

    @contextlib.contextmanager
    def call_scope(self, prompt: str | None, rows: list[str | None] | None = None) -> Iterator[None]:
        """Makes calls in the current context (this thread or task) use ``prompt``, or per-row ``rows``.

        Other threads keep seeing :meth:`set_active`'s choice: the choice
        travels in a ``contextvars`` context, not in the model.
        """
        token = _CALL.set((self, prompt, None if rows is None else tuple(rows)))
        try:
            yield
        finally:
            _CALL.reset(token)

    def _names(self, batch: int) -> tuple[str | None, ...] | None:
        """Returns each row's prompt for a call of ``batch`` rows, or None when no row has one."""
        scoped = _CALL.get()
        if scoped is not None and scoped[0] is self:
            prompt, rows = scoped[1], scoped[2]
        else:
            prompt, rows = self.active, (None if self.rows is None else tuple(self.rows))
        if rows is not None:
            if all(r is None for r in rows):
                return None
            return expand_rows(rows, batch)
        return None if prompt is None else (prompt,) * batch

    def _layout(self, names: tuple[str | None, ...]) -> Layout:
        """Returns the layout of one call whose rows have the prompts ``names`` (kept for the next calls)."""
        layout = self._layouts.get(names)
        if layout is None:
            tokens = {n: self.parts[n].tokens for n in set(names) if n is not None}
            layout = build_layout(names, tokens, self._explicit_positions)
            if len(self._layouts) >= 16:  # a few batch shapes recur; don't grow without bound
                self._layouts.clear()
            self._layouts[names] = layout  # (layouts are immutable: safe to share across threads)
        return layout

    def remove(self) -> None:
        """Removes the hooks and the ``adaptlang_prompts`` module; forgets every part."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if PROMPT_ATTR in self.model._modules:
            del self.model._modules[PROMPT_ATTR]
        self.parts.clear()
        self.embed_paths.clear()
        self.active = None

    def _check_length(self, layout: Layout, length: int) -> None:
        """Refuses a prompt plus ``length`` inputs that a model with absolute positions cannot embed."""
        limit = self._max_positions
        if limit is not None and layout.width + length > limit:
            raise RuntimeApplyError(Diagnostic(
                f"the prompt's {layout.width} tokens and {length} input positions make {layout.width + length}; "
                f"{type(self.model).__name__} embeds at most {limit} positions", obj=_first(layout.names),
                hint=f"keep inputs to {limit - layout.width} positions (or use fewer prompt tokens)"))

    # ---------------------------------------------------------------- hooks
    def _keywords(self, module: nn.Module, args: tuple, kwargs: dict) -> dict:
        """Returns the call as keywords only."""
        kwargs = dict(kwargs)
        if args:
            names = self._arg_names.get(id(module), [])
            if len(args) > len(names):
                raise RuntimeApplyError("prompt tuning: too many positional arguments; call the model with keywords")
            kwargs.update(zip(names, args))
        return kwargs

    def _inputs(self, kwargs: dict) -> torch.Tensor | None:
        """Returns the call's input embeddings (B, L, D), looking ``input_ids`` up; pops ``input_ids``."""
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None and input_ids is not None:
            name = next(iter(self.embed_paths))  # every prompt delta sits on the input embedding
            embeds = resolve_module(self.model, self.embed_paths[name])(input_ids)  # (B, L, D)
        return embeds

    def _on_root(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Root pre-hook: the prompt on a decoder-only model; the cross-attention mask on an encoder-decoder."""
        _RUNNING.set(None)
        if self._encoder_decoder:
            return self._extend_cross_mask(module, args, kwargs)
        kwargs = self._keywords(module, args, kwargs)
        cache = find_cache(kwargs)
        past = cache_length(cache)
        marked = MARKS.get(cache) if past > 0 else None
        main = _main_input(kwargs)
        if not isinstance(main, torch.Tensor):
            return None  # nothing to prepend to
        names = self._names(main.shape[0])
        if past > 0:
            return self._decoding_step(kwargs, cache, past, marked, names, main)
        if names is None:
            return None
        input_ids = kwargs.get("input_ids")
        embeds = self._inputs(kwargs)
        layout = self._layout(names)
        self._check_length(layout, embeds.shape[1])
        state = CacheState.after_first_call(layout, kwargs.get("position_ids"), embeds.shape[1])
        prepend(kwargs, embeds, prompt_block(self.parts, layout, embeds.dtype, embeds.device), layout, labels=True)
        if self._pool_pad is not None and isinstance(input_ids, torch.Tensor) and cache is None:
            align_last_token(kwargs, input_ids, self._pool_pad)
        if cache is not None:
            MARKS.put(cache, state)
        _RUNNING.set(state)
        return (), kwargs

    def _decoding_step(self, kwargs: dict, cache: Any, past: int, marked: CacheState | None,
                       names: tuple[str | None, ...] | None, main: torch.Tensor) -> tuple[tuple, dict] | None:
        """A call whose cache already holds positions: line it up with the prompt the cache holds."""
        batch = main.shape[0]
        if marked is None:
            if names is None:
                return None  # a cache without prompts, and no prompt now: nothing of ours
            raise RuntimeApplyError(Diagnostic(
                f"the KV cache holds {past} positions computed without prompt '{_first(names)}'",
                obj=_first(names), hint="start the sequence with the prompt active (pass no cache, or an empty one)"))
        held = marked.layout.for_batch(batch).names
        if names != held:
            now = "no prompt" if names is None else f"prompt '{_first(names)}'"
            raise RuntimeApplyError(Diagnostic(
                f"the KV cache holds prompt '{_first(held)}'; the call now runs {now}", obj=_first(held),
                hint="finish the sequence under the task it started with, or start again without the cache"))
        length = main.shape[1]
        self._check_length(marked.layout, past - marked.layout.width + length)
        continue_step(kwargs, marked, past, batch, length, main.device)
        return (), kwargs

    def _after_root(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Root forward hook: marks a cache the model made during a prompted call (``use_cache`` without one)."""
        state = _RUNNING.get()
        if state is None:
            return
        _RUNNING.set(None)
        values = output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else ()
        for value in values:
            if value is not None and callable(getattr(value, "get_seq_length", None)) and MARKS.get(value) is None:
                MARKS.put(value, state)

    def _extend_cross_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Encoder-decoder root: the decoder's cross-attention mask must cover the encoder's prompt too."""
        kwargs = self._keywords(module, args, kwargs)
        encoded = kwargs.get("encoder_outputs")
        mask = kwargs.get("attention_mask")
        if encoded is not None:
            return self._decoder_step_mask(kwargs, encoded, mask)
        main = _main_input(kwargs)
        if not isinstance(main, torch.Tensor):
            return None
        names = self._names(main.shape[0])
        if names is None:
            return None
        layout = self._layout(names)
        if mask is None:
            mask = torch.ones(main.shape[0], main.shape[1], dtype=torch.long, device=main.device)
        elif mask.dim() != 2 or mask.shape[-1] != main.shape[1]:
            raise RuntimeApplyError(f"attention_mask must be (batch, length) = {tuple(main.shape[:2])}")
        kwargs["attention_mask"] = torch.cat([layout.mask.to(mask), mask], dim=1)  # (B, P+L): the encoder keeps it
        return (), kwargs

    @staticmethod
    def _decoder_step_mask(kwargs: dict, encoded: Any, mask: torch.Tensor | None) -> tuple[tuple, dict] | None:
        """A decoder call on a finished encoder output: its mask gets the prompt positions the output holds."""
        hidden = encoded[0]  # (B, P+L, D) when the encoder ran with a prompt
        total = hidden.shape[1]
        # The output object is marked (generate() expands it in place for beams), and so is its
        # hidden-state tensor (callers may pass it on in a tuple of their own).
        layout = MARKS.get(encoded) or MARKS.get(hidden)
        if layout is None:
            if isinstance(mask, torch.Tensor) and mask.shape[-1] != total:
                raise RuntimeApplyError(Diagnostic(
                    f"attention_mask covers {mask.shape[-1]} positions; the encoder output has {total}, and it "
                    "is not one the encoder computed with a prompt of this model", obj="attention_mask",
                    hint="pass the encoder output the model returned, or a mask over all its positions"))
            return None
        if mask is None:
            if not layout.padded:
                return None  # no mask: every position is seen, the prompt's too
            mask = hidden.new_ones(hidden.shape[0], total - layout.width, dtype=torch.long)
        elif mask.shape[-1] == total:
            return None  # the caller's mask already covers the prompt
        elif mask.shape[-1] + layout.width != total:
            raise RuntimeApplyError(Diagnostic(
                f"attention_mask covers {mask.shape[-1]} positions; the encoder output has {total} "
                f"(a {layout.width}-token prompt included)", obj="attention_mask"))
        kwargs["attention_mask"] = torch.cat([layout.for_batch(mask.shape[0]).mask.to(mask), mask], dim=1)
        return (), kwargs

    def _on_encoder(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Encoder pre-hook (encoder-decoder models): the prompt in front of the encoder's input."""
        kwargs = self._keywords(module, args, kwargs)
        main = _main_input(kwargs)
        if not isinstance(main, torch.Tensor):
            return None
        names = self._names(main.shape[0])
        if names is None:
            _RUNNING.set(None)
            return None
        embeds = self._inputs(kwargs)
        layout = self._layout(names)
        self._check_length(layout, embeds.shape[1])
        prepend(kwargs, embeds, prompt_block(self.parts, layout, embeds.dtype, embeds.device), layout, labels=False)
        _RUNNING.set(layout)
        return (), kwargs

    def _after_encoder(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Encoder forward hook: records which prompt its output holds, for the decoder steps that use it."""
        layout = _RUNNING.get()
        if layout is not None:
            _RUNNING.set(None)
            MARKS.put(output, layout)
            hidden = output[0] if isinstance(output, (tuple, dict)) else output
            if isinstance(hidden, torch.Tensor):
                MARKS.put(hidden, layout)


def absolute_position_limit(config: Any) -> int | None:
    """The most positions a model with learned absolute position embeddings takes (GPT-2, BERT), else None.

    Rotary and relative positions (Llama, T5) have no hard limit, so None.
    """
    if config is None:
        return None
    limit = getattr(config, "n_positions", None)
    if limit is None and getattr(config, "position_embedding_type", None) == "absolute":
        limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else None


def _main_input(kwargs: dict) -> torch.Tensor | None:
    """The call's ``inputs_embeds``, else its ``input_ids`` (either may be passed as None)."""
    embeds = kwargs.get("inputs_embeds")
    return embeds if isinstance(embeds, torch.Tensor) else kwargs.get("input_ids")


def _first(names: tuple[str | None, ...]) -> str | None:
    """The first named prompt of a row list (for messages)."""
    return next((n for n in names if n is not None), None)
