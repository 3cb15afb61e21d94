"""Partial fine-tuning and BitFit: re-training existing parameters, per delta.

A ``tune`` delta gets its own copy of each selected parameter, made from the
base values at apply time. The copy is swapped into the module's parameter
slot (``module._parameters[name] = copy``) while a task using the delta is
active; otherwise the slot holds the original ``Parameter`` object, which is
never written to, so the frozen base stays bit-identical and ``remove()`` can
put the very same objects back.

A tied tensor (one ``Parameter`` in several slots, as the plan's
``shared_with`` says) gets one copy in every slot the delta names, so the
tie holds while the delta is active; slots it leaves out (``untied_from``)
keep the original. :func:`check_site_ties` refuses a model whose ties differ
from the plan's (the structural fingerprint does not see ties).

Copies belong to deltas, not tasks, like every other delta's parameters:
two tasks that use the same ``tune`` delta see the same trained values (so
``frozen(head)`` in a second task reuses what the first task trained). Two
different ``tune`` deltas on the same parameter each have their own copy.

The slots are model state that every forward reads, so a copy in a slot is
seen by every caller: a mixed-task call that needs other copies than the
active task's runs alone (:mod:`adaptlang.runtime.mixed`,
:mod:`adaptlang.runtime.concurrency`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.plan.ties import SHARED, UNTIED, full_param_path
from adaptlang.runtime.binding import resolve_slot

__all__ = ["SlotKey", "SlotAssignment", "TuneSlots", "check_site_ties", "find_tied_paths", "split_param_path"]

#: A parameter slot by plan path: (module path, parameter name).
SlotKey = tuple[str, str]
#: What one task puts in one slot: the slot, and the tune delta whose copy goes there (None: the original).
SlotAssignment = tuple[SlotKey, "str | None"]


class TuneSlots:
    """The tuned copies of one adapted model and the original parameters they replace.

    The parameter in a slot now is read from the slot (an engine such as
    FSDP2 may have replaced the object put there); ``holder`` says whose it
    is. The objects kept in ``originals`` and ``copies`` are the current ones
    for every slot they are not in: a switch takes the slot's object back
    into its owner's place before it puts the next one in.

    Args:
        model: The root model.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals: dict[SlotKey, nn.Parameter] = {}
        self.modules: dict[SlotKey, nn.Module] = {}
        self.copies: dict[str, dict[SlotKey, nn.Parameter]] = {}
        self.holder: dict[SlotKey, str | None] = {}  # slot -> tune delta in it now (None: the original)

    def add(self, delta: str, site: dict[str, Any]) -> nn.Parameter:
        """Makes ``delta``'s copy of the parameter a plan site names.

        Args:
            delta: The tune delta's name.
            site: The plan site (``path``, ``param``, ``shape``).

        Returns:
            The new copy (``requires_grad`` False until a task activates it).

        Raises:
            RuntimeApplyError: The slot is missing or its shape differs from the plan's.
        """
        key: SlotKey = (site["path"], site["param"])
        keys = [key] + [split_param_path(full) for full in site.get(SHARED, ())]
        found = []
        for slot in keys:
            module, name = resolve_slot(self.model, *slot)
            original = self.originals.get(slot, module._parameters[name])
            if original is None:
                raise RuntimeApplyError(Diagnostic(f"parameter '{slot[0]}.{slot[1]}' is None", obj=delta))
            found.append((slot, module, original))
        original = found[0][2]
        if "shape" in site and tuple(original.shape) != tuple(site["shape"]):
            raise RuntimeApplyError(Diagnostic(
                f"'{key[0]}.{key[1]}' has shape {tuple(original.shape)}, the plan says {tuple(site['shape'])}",
                obj=delta))
        copy = nn.Parameter(original.detach().clone(), requires_grad=False)
        for slot, module, slot_original in found:  # one copy in every slot the delta shares
            self.originals[slot] = slot_original
            self.modules[slot] = module
            self.holder.setdefault(slot, None)
            self.copies.setdefault(delta, {})[slot] = copy
        return copy

    def live(self, delta: str, key: SlotKey) -> nn.Parameter:
        """Returns ``delta``'s copy for slot ``key`` as it is now (the slot's object while it holds it)."""
        if self.holder.get(key) == delta:
            return self.modules[key]._parameters[key[1]]
        return self.copies[delta][key]

    def adapter_params(self, delta: str) -> dict[SlotKey, nn.Parameter]:
        """Returns ``delta``'s copies by slot, as they are now (empty for a delta that is not ``tune``).

        A copy shared by tied slots is listed under each of them (the same object).
        """
        return {key: self.live(delta, key) for key in self.copies.get(delta, {})}

    def copy_ids(self) -> set[int]:
        """Returns ``id()`` of every delta's copy as it is now (``merge`` must not fold into one)."""
        return {id(self.live(delta, key)) for delta, copies in self.copies.items() for key in copies}

    def assignments_for(self, deltas: list[str], task: str = "") -> list[SlotAssignment]:
        """Precomputes what every slot holds while exactly ``deltas`` are active.

        Args:
            deltas: The active task's tune deltas.
            task: The task's name, for errors.

        Returns:
            One assignment per known slot: the delta whose copy goes there, or None (the original).

        Raises:
            RuntimeApplyError: Two of the deltas tune the same parameter.
        """
        chosen: dict[SlotKey, str] = {}
        for delta in deltas:
            for key in self.copies.get(delta, {}):
                if key in chosen:
                    raise RuntimeApplyError(Diagnostic(
                        f"task '{task}': deltas '{chosen[key]}' and '{delta}' both tune "
                        f"'{key[0]}.{key[1]}'", obj=task))
                chosen[key] = delta
        return [(key, chosen.get(key)) for key in self.originals]

    def activate(self, assignments: list[SlotAssignment]) -> None:
        """Puts each assignment's parameter in its slot (skipping slots already right).

        The object leaving a slot is kept as its owner's (the original or the
        copy), whatever object an engine had put there meanwhile.

        Raises:
            RuntimeApplyError: A slot that must change holds a parameter a
                sharding engine manages (nothing is changed then).
        """
        changing = [(key, want) for key, want in assignments if self.holder[key] != want]
        if changing:
            refuse_sharded_swap(self.model, changing[0][0], self.holder[changing[0][0]], changing[0][1])
        for key, want in changing:
            module, name = self.modules[key], key[1]
            self._keep(key, self.holder[key], module._parameters[name])
            module._parameters[name] = self.originals[key] if want is None else self.copies[want][key]
            self.holder[key] = want

    def reset(self, assignments: list[SlotAssignment]) -> None:
        """Puts each assignment's kept object in its slot, whatever the slot and ``holder`` say now.

        For a copy of a model taken while a call had other copies in the slots
        (:func:`~adaptlang.runtime.copying.deepcopy_handle`): the slots and
        ``holder`` may have been copied at different moments, so neither is
        trusted; the kept objects are (no engine touches a copy being made).
        """
        for key, want in assignments:
            module, name = self.modules[key], key[1]
            module._parameters[name] = self.originals[key] if want is None else self.copies[want][key]
            self.holder[key] = want

    def _keep(self, key: SlotKey, owner: str | None, param: nn.Parameter) -> None:
        """Stores the object leaving slot ``key`` as its owner's (every tied slot of a copy shares it)."""
        if owner is None:
            self.originals[key] = param
            return
        copies = self.copies[owner]
        old = copies[key]
        for other, value in copies.items():  # a tied copy: the same object in each of its slots
            if value is old:
                copies[other] = param

    def restore(self) -> None:
        """Puts every original ``Parameter`` object back in its slot."""
        self.activate([(key, None) for key in self.originals])


def refuse_sharded_swap(model: nn.Module, key: SlotKey, now: str | None, want: str | None) -> None:
    """Raises when ``model`` is sharded: slot ``key`` would change hands.

    Why: FSDP2 and FSDP1 keep their own record of every parameter they
    shard and write it back into the slot at each forward; a tensor put
    there by anyone else would be ignored or mixed with shards.
    """
    from adaptlang.runtime.shards import model_engine

    engine = model_engine(model)
    if engine is None:
        return
    who = (lambda d: "the original" if d is None else f"tune delta '{d}'")
    raise RuntimeApplyError(Diagnostic(
        f"'{key[0]}.{key[1]}' holds {who(now)}'s values, sharded by {engine}; this task needs {who(want)}'s "
        "there, and a sharded model's parameter slots belong to the engine", obj=f"{key[0]}.{key[1]}",
        hint="choose the task with use() before sharding (a tune delta is trained in the slot it occupies "
             "then), or give each such task a model of its own",
        notes=("tasks without tune deltas, or with the same ones, switch freely on a sharded model",)))


def split_param_path(full: str) -> SlotKey:
    """``"lm_head.weight"`` -> ``("lm_head", "weight")``."""
    path, _, name = full.rpartition(".")
    return (path, name)


def find_tied_paths(model: nn.Module) -> dict[int, list[str]]:
    """Returns ``id()`` -> every path of each parameter the model holds in more than one slot.

    Read before anything is wrapped, so the paths are the plan's.
    """
    paths: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        paths.setdefault(id(p), []).append(name)
    return {k: v for k, v in paths.items() if len(v) > 1}


def check_site_ties(delta: str, site: dict[str, Any], model: nn.Module, tied: dict[int, list[str]]) -> None:
    """Refuses a tune or sparse site whose tensor is tied differently in ``model`` than in the plan.

    Why: the structural fingerprint lists every slot but not which slots share a
    tensor, so a plan compiled for a tied model fits an untied one of the same
    shape (and back); applying it would share or untie silently.

    Args:
        delta: The delta's name (for the error).
        site: The plan site (``path``, ``param``, optional ``shared_with``/``untied_from``).
        model: The model, not wrapped yet at this slot.
        tied: :func:`find_tied_paths` of the model before patching.

    Raises:
        RuntimeApplyError: The names the plan ties differ from the model's.
    """
    own = full_param_path(site["path"], site["param"])
    module, name = resolve_slot(model, site["path"], site["param"])
    param = module._parameters[name]
    want = sorted({*site.get(SHARED, ()), *site.get(UNTIED, ())} - {own})
    have = sorted(set(tied.get(id(param), ())) - {own})
    if want != have:
        def ties(names: list[str]) -> str:
            return f"tied to {', '.join(names)}" if names else "not tied"

        raise RuntimeApplyError(Diagnostic(
            f"in the plan '{own}' is {ties(want)}; in this model it is {ties(have)}", obj=delta,
            hint="compile the spec against this model (tied embeddings change what a tune or sparse delta means)"))
