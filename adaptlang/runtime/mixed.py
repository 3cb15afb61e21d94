"""Mixed-task batches: ``adapted(**inputs, tasks=[...])`` runs every row under its own task, in one forward.

``tasks`` names one task per batch row (``None``: the bare base model). For
the call, every site gets per-row delta lists (``SiteModule.set_rows``, see
:mod:`adaptlang.runtime.rows` and :mod:`adaptlang.runtime.row_lora`), the
prompt hook gets per-row prompts (:mod:`adaptlang.runtime.prompt_rows`), and
afterwards the active task's state comes back, also when the call fails.
Each row's output equals that row run alone under its task (float rounding
aside); with prompts of different lengths, a row's inputs sit at the last
``L`` positions of the output, as they do with one prompt.

Not mixable, refused with an error naming the task:

* rows whose tasks put different ``tune`` copies in one parameter slot (a
  re-trained ``lm_head.weight`` is one tensor for the whole batch); tasks
  that agree on their tune deltas mix freely;
* a merged model (its weights hold one task): ``unmerge()`` first.

``requires_grad`` flags stay the active task's: gradients of a mixed batch
reach the deltas of the active task (train one task per batch; mixed batches
are meant for serving).

Layouts (which site gets which per-row lists) are computed once per
distinct ``tasks`` list and kept (a few per model).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from adaptlang.errors import Diagnostic, RuntimeApplyError, UsageError, did_you_mean

__all__ = ["MixedLayout", "check_tasks", "run_mixed"]

#: Layouts kept per adapted model (most recent ``tasks`` lists).
_KEEP = 8
_layouts: "weakref.WeakKeyDictionary[Any, dict[tuple, MixedLayout]]" = weakref.WeakKeyDictionary()


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
        if [id(p) for _, _, p in tunes[name]] != [id(p) for _, _, p in tunes[first]]:
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
    cache = _layouts.setdefault(adapted, {})
    layout = cache.get(names)
    if layout is None:
        layout = build_layout(adapted._patch, names)
        if len(cache) >= _KEEP:
            cache.pop(next(iter(cache)))
        cache[names] = layout
    return layout


def run_mixed(adapted: Any, args: tuple, kwargs: dict, tasks: Any) -> Any:
    """Calls the model with each batch row under its own task (module docstring).

    Args:
        adapted: The :class:`~adaptlang.runtime.adapted.Adapted` handle.
        args, kwargs: The model call.
        tasks: One task name (or None) per batch row.

    Returns:
        The model's output.

    Raises:
        UsageError: A malformed ``tasks`` list.
        RuntimeApplyError: Unknown or unmixable tasks, a merged model, or a failure in the call.
    """
    adapted._check_live()
    patch = adapted._patch
    names = check_tasks(tasks, patch.configs, batch_size(args, kwargs))
    if adapted.merged:
        raise RuntimeApplyError(Diagnostic(
            f"the model is merged (task '{adapted.active_task}' is folded into its weights)", obj="tasks",
            hint="call unmerge() before running a mixed-task batch"))
    layout = _layout(adapted, names)
    active = patch.configs[adapted.active_task]
    try:
        for site, rows in layout.sites:
            site.set_rows(rows)
        patch.tune.activate(layout.tune)
        if layout.prompts is not None:
            patch.prompts.set_rows(layout.prompts)
        else:
            patch.prompts.set_active(layout.prompt)
        return adapted.model(*args, **kwargs)
    finally:
        for site, _ in layout.sites:
            site.set_rows(None)
        patch.tune.activate(active.tune)
        patch.prompts.set_rows(None)
        patch.prompts.set_active(active.prompt)
