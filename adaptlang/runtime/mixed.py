"""Mixed-task batches: ``adapted(**inputs, tasks=[...])`` runs every row under its own task, in one forward.

``tasks`` names one task per batch row (``None``: the bare base model). For
the call, every site runs a per-row program (:mod:`adaptlang.runtime.rows`
and :mod:`adaptlang.runtime.row_lora`) and the prompt hook prepends per-row
prompts (:mod:`adaptlang.runtime.prompt_rows`). Both travel with the call,
in its context (:data:`~adaptlang.runtime.concurrency.CALL_PROGRAMS` and
``PromptController.call_scope``), not in the model: the active task is never
touched, and threads calling one model with different ``tasks`` at once get
each their own rows (:mod:`adaptlang.runtime.concurrency`). Each row's output
equals that row run alone under its task (float rounding aside); with
prompts of different lengths, a row's inputs sit at the last ``L`` positions
of the output, as they do with one prompt.

Re-trained (``tune``) parameters are the exception: their copies go in the
model's parameter slots, one value per slot for the whole batch. Rows whose
tasks agree on their tune deltas mix freely; when that agreed set differs
from the active task's, the call swaps the slots and so runs *alone*: it
waits for running forwards and holds back other calls until it returns.

Not mixable, refused with an error naming the task:

* rows whose tasks put different ``tune`` copies in one parameter slot (a
  re-trained ``lm_head.weight`` is one tensor for the whole batch);
* a merged model (its weights hold one task): ``unmerge()`` first.

``requires_grad`` flags stay the active task's: gradients of a mixed batch
reach the deltas of the active task (train one task per batch; mixed batches
are meant for serving). The per-row programs are in effect during the
forward only: recomputing it in the backward (gradient checkpointing) runs
the active task's.

Layouts (which site runs which per-row program) are computed once per
distinct ``tasks`` list and kept (a few per model); a layout's programs are
rebuilt when a site's tensors change (its ``_epoch``: ``.to()``,
``quantize()``, merging).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from adaptlang.errors import Diagnostic, RuntimeApplyError, UsageError, did_you_mean
from adaptlang.runtime.concurrency import CALL_PROGRAMS, call_programs
from adaptlang.runtime.layers import first_input
from adaptlang.runtime.program import FULL
from adaptlang.runtime.shards import refuse_fsdp1_call

__all__ = ["BatchDispatch", "MixedLayout", "check_tasks", "expansion", "run_mixed", "run_plain"]

#: Layouts kept per adapted model (most recent ``tasks`` lists).
_KEEP = 8
_layouts: "weakref.WeakKeyDictionary[Any, dict[tuple, MixedLayout]]" = weakref.WeakKeyDictionary()
_layouts_lock = threading.Lock()  # calls on other threads add and drop layouts too


@dataclass
class MixedLayout:
    """What one ``tasks`` list sets for a call.

    Attributes:
        sites: ``(site, per-row (delta, weight) lists)`` for every site with parts.
        tune: What every tuned parameter slot holds (the same for every row).
        prompts: Per-row prompt deltas, or None when every row has the same one.
        prompt: That one prompt (None: none) when ``prompts`` is None.
    """

    sites: list[tuple[Any, list[list[tuple[str, float]]]]]
    tune: list[Any]
    prompts: list[str | None] | None
    prompt: str | None
    #: ``(site epochs, {site: program})`` as last built; one attribute, so a reader sees a matching pair.
    built: tuple[list[int], dict[Any, Any]] | None = None

    def programs(self) -> dict[Any, Any]:
        """Returns site -> per-row program, rebuilt when a site's tensors changed since (its ``_epoch``)."""
        built = self.built
        if built is not None and [site._epoch for site, _ in self.sites] == built[0]:
            return built[1]
        epochs = [site._epoch for site, _ in self.sites]  # before building: a change meanwhile rebuilds again
        programs = {site: site.row_program(rows) for site, rows in self.sites}
        self.built = (epochs, programs)
        return programs

    def swaps_tune(self, active: Any) -> bool:
        """True when the layout's tune slots differ from what the ``active`` config put there."""
        return any(mine != theirs for (_, mine), (_, theirs) in zip(self.tune, active.tune))


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """Returns the batch size of a model call: dim 0 of its ids, embeddings, or first tensor."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def check_tasks(tasks: Any, known: Any, batch: int | None) -> tuple[str | None, ...]:
    """Returns ``tasks`` as a tuple after checking it against the task names and the batch.

    Raises:
        UsageError: Not a list of names, or a length that differs from the batch size.
        RuntimeApplyError: An unknown task (with a did-you-mean).
    """
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)):
        raise UsageError(Diagnostic(
            f"tasks must be a list with one task name (or None) per batch row, got {type(tasks).__name__}",
            obj="tasks", hint="for one task for the whole batch, call adapted.use(task) instead"))
    for r, name in enumerate(tasks):
        if name is not None and not isinstance(name, str):
            raise UsageError(Diagnostic(f"tasks[{r}] must be a task name or None, got {type(name).__name__}",
                                        obj="tasks"))
        if name is not None and name not in known:
            raise RuntimeApplyError(Diagnostic(
                f"unknown task '{name}' (row {r} of the batch)", obj=name, hint=did_you_mean(name, known),
                notes=(f"tasks: {', '.join(known)}",)))
    if batch is None:
        raise UsageError(Diagnostic("a mixed-task call needs a batched tensor input (input_ids or inputs_embeds)",
                                    obj="tasks"))
    if len(tasks) != batch:
        raise UsageError(Diagnostic(f"tasks names {len(tasks)} rows; the batch has {batch}", obj="tasks",
                                    hint="give one task name (or None for the base model) per row"))
    return tuple(tasks)


def build_layout(patch: Any, names: tuple[str | None, ...]) -> MixedLayout:
    """Computes the per-site row lists, the tune slots and the prompts for ``names``.

    Raises:
        RuntimeApplyError: Rows whose tasks disagree on re-trained (``tune``) parameters.
    """
    configs = patch.configs
    distinct = list(dict.fromkeys(names))
    # Every config lists every site that has parts (with an empty list where the task has nothing).
    all_sites = [site for site, _ in next(iter(configs.values())).sites]
    lists = {n: {id(site): list(active) for site, active in configs[n].sites} for n in distinct if n is not None}
    sites = [(site, [lists[n].get(id(site), []) if n is not None else [] for n in names]) for site in all_sites]

    originals = patch.tune.assignments_for([])
    tunes = {n: (configs[n].tune if n is not None else originals) for n in distinct}
    first = distinct[0]
    for name in distinct[1:]:
        if [d for _, d in tunes[name]] != [d for _, d in tunes[first]]:
            odd = name if name is not None and any(d in patch.tune.copies for d in configs[name].deltas) else first
            other = first if odd == name else name
            deltas = [d for d in configs[odd].deltas if d in patch.tune.copies]
            raise RuntimeApplyError(Diagnostic(
                f"task '{odd}' re-trains existing parameters (tune: {', '.join(deltas)}), which rows of "
                f"'{other if other is not None else 'None (the base model)'}' use as they are; one batch "
                "holds one value per parameter", obj=odd,
                hint=f"run the rows of '{odd}' in a batch of their own (or with tasks that share its tune deltas)"))
    prompts = [configs[n].prompt if n is not None else None for n in names]
    same = len(set(prompts)) == 1
    return MixedLayout(sites=sites, tune=tunes[first], prompts=None if same else prompts,
                       prompt=prompts[0] if same else None)


def _layout(adapted: Any, names: tuple[str | None, ...]) -> MixedLayout:
    """Returns the (cached) layout for ``names``."""
    with _layouts_lock:
        cache = _layouts.setdefault(adapted, {})
        layout = cache.get(names)
    if layout is None:
        layout = build_layout(adapted._patch, names)  # (outside the lock: two threads may both build; same result)
        with _layouts_lock:
            if len(cache) >= _KEEP:
                cache.pop(next(iter(cache)))
            cache[names] = layout
    return layout


def run_mixed(adapted: Any, args: tuple, kwargs: dict, tasks: Any, *, generate: bool = False) -> Any:
    """Calls the model (or its ``generate``) with each batch row under its own task (module docstring).

    Safe to call from several threads at once (and beside plain calls); a
    layout that swaps tune slots runs alone.

    Args:
        adapted: The :class:`~adaptlang.runtime.adapted.Adapted` handle.
        args, kwargs: The model call.
        tasks: One task name (or None) per batch row.
        generate: Call ``model.generate`` instead of the forward (see :func:`expansion`).

    Returns:
        The model's output (or ``generate``'s).

    Raises:
        UsageError: A malformed ``tasks`` list, or a call that must run alone made from
            inside a forward of the model.
        RuntimeApplyError: Unknown or unmixable tasks, a merged model, or a failure in the call.
    """
    adapted._check_live()
    refuse_fsdp1_call(adapted.model)
    patch = adapted._patch
    names = check_tasks(tasks, patch.configs, batch_size(args, kwargs))
    if torch.is_grad_enabled() and adapted.model.training and _checkpointing(adapted.model):
        # The backward recomputes checkpointed layers outside this call's context, under the active task.
        raise UsageError(Diagnostic(
            "a mixed-task call with gradient checkpointing on: the backward would recompute the layers "
            "under the active task, not each row's, and give wrong gradients", obj="tasks",
            hint="train one task per batch (use(task)), or call under torch.no_grad() / model.eval() to serve"))
    layout = _layout(adapted, names)
    wide = None
    if generate:
        k = expansion(adapted.model, kwargs)
        wide = _layout(adapted, tuple(n for n in names for _ in range(k))) if k > 1 else None
    call = adapted.model.generate if generate else adapted.model
    gate = adapted._gate
    with gate.forward():
        active = _checked_active(adapted)
        if not layout.swaps_tune(active):
            return _run(adapted, layout, wide, call, args, kwargs)
    # The layout's tune copies must sit in the parameter slots every forward reads: run alone.
    with gate.forward(exclusive=True):
        active = _checked_active(adapted)  # (the task may have changed between the two)
        try:
            patch.tune.activate(layout.tune)
            return _run(adapted, layout, wide, call, args, kwargs)
        finally:
            patch.tune.activate(active.tune)


def expansion(model: Any, kwargs: dict) -> int:
    """How many rows ``generate`` makes of each input row: ``max(num_beams, num_return_sequences)``.

    That is how transformers' ``generate`` expands its inputs (each row
    repeated in place, ``repeat_interleave``) before decoding; a model whose
    ``generate`` expands differently meets a clear error from the per-row
    programs (their batch size is checked on every call), never a silent mix.
    """
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    sequences = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
    return max(int(beams), int(sequences))


class BatchDispatch:
    """One site's per-row programs for two batch sizes, chosen by the call's batch.

    ``generate`` on an encoder-decoder model runs the encoder on the ``B``
    input rows, then decodes ``B * k`` rows (beams, several sequences).
    """

    mode = FULL

    def __init__(self, programs: dict[int, Any]):
        self.programs = programs

    def run(self, args: tuple, kwargs: dict, training: bool) -> Any:
        """Runs the program laid out for this call's batch size (dim 0 of the main input)."""
        batch = first_input(args, kwargs).shape[0]
        prog = self.programs.get(batch)
        if prog is None:
            raise RuntimeApplyError(Diagnostic(
                f"per-row tasks were laid out for {' or '.join(map(str, self.programs))} rows; this call has {batch}",
                obj="tasks", hint="give one task per input row of generate()"))
        return prog.run(args, kwargs, training)


def run_plain(adapted: Any, args: tuple, kwargs: dict) -> Any:
    """``adapted(...)`` without ``tasks``: the active task for every row, beside other calls (under the gate)."""
    with adapted._gate.forward():
        adapted._check_live()  # a call that waited while another thread removed the patch must not run bare
        refuse_fsdp1_call(adapted.model)
        if CALL_PROGRAMS.get() is None:
            return adapted.model(*args, **kwargs)
        # Made from inside a mixed-task call (a hook): the active task, not the outer call's rows.
        config = adapted._patch.configs.get(adapted.active_task)
        with call_programs(None), adapted._patch.prompts.call_scope(config.prompt if config else None, None):
            return adapted.model(*args, **kwargs)


def _checkpointing(model: Any) -> bool:
    """True when some module of the model checkpoints its activations (HF's ``gradient_checkpointing`` flag)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _checked_active(adapted: Any) -> Any:
    """The active task's config, after checking the handle is live and unmerged (under the gate)."""
    adapted._check_live()
    if adapted.merged:
        raise RuntimeApplyError(Diagnostic(
            f"the model is merged (task '{adapted.active_task}' is folded into its weights)", obj="tasks",
            hint="call unmerge() before running a mixed-task batch"))
    return adapted._patch.configs[adapted.active_task]


def _run(adapted: Any, layout: MixedLayout, wide: MixedLayout | None, call: Any, args: tuple, kwargs: dict) -> Any:
    """Runs ``call`` with the layout's programs and prompts in this call's context.

    ``wide``: the layout of the rows ``generate`` expands to, when it does.
    """
    programs = layout.programs()
    if wide is not None:
        batch, big = len(layout.sites[0][1]) if layout.sites else 0, len(wide.sites[0][1]) if wide.sites else 0
        expanded = wide.programs()
        programs = {site: BatchDispatch({batch: prog, big: expanded[site]}) for site, prog in programs.items()}
    with call_programs(programs), adapted._patch.prompts.call_scope(layout.prompt, layout.prompts):
        return call(*args, **kwargs)
