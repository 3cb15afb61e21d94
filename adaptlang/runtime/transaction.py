"""All-or-nothing patching: an undo log, and the model state it must restore.

Every change ``apply`` makes to a model registers how to take it back. If a
later step fails, :meth:`Transaction.rollback` runs those in reverse, so the
model keeps the same module objects at every path, the same parameter
objects and values, the same ``requires_grad`` flags, and no hooks or
attributes of ours.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from torch import nn

from adaptlang.errors import AdaptError, Diagnostic, RuntimeApplyError
from adaptlang.runtime.binding import (
    ModuleSnapshot, derive_generator, resolve_module, snapshot_flags, split_path,
)
from adaptlang.runtime.prompt import PROMPT_ATTR, PromptController
from adaptlang.plan.ties import SHARED
from adaptlang.runtime.tune import SlotAssignment, TuneSlots, check_site_ties, find_tied_paths, split_param_path
from adaptlang.runtime.refs import SlotRef, TuneRef, refs_of
from adaptlang.runtime.copying import HANDLE_ATTR, OUTSIDE_ATTR, attach_outside
from adaptlang.runtime.undo import Detach, RemovePrompts, RestoreFlags, RestoreTune, UnwrapSite

#: A reference to a delta parameter (``ref.get()`` returns it as the model holds it now).
Ref = SlotRef | TuneRef

__all__ = ["Patch", "TaskConfig", "Transaction", "check_not_adapted", "patch_model"]


class Transaction:
    """An undo log for one ``apply``.

    Usage::

        tx = Transaction()
        with tx.step("wrapping", path):
            ...                              # failures become RuntimeApplyError naming path
            tx.on_undo(UndoAction(...))      # how to take the change back
        # on any error: tx.rollback(); later, remove(): tx.rollback(removing=True)

    Undo actions get ``removing``: False when a failed ``apply`` is rolled
    back, True when ``remove()`` takes a finished patch off (which may keep
    things the user did since, such as hooks they added).

    Actions must be objects of module-level classes holding the model
    objects they restore (:mod:`adaptlang.runtime.undo`), never closures:
    deep copies and pickles of an adapted model carry this log along.
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[bool], None]] = []

    def on_undo(self, action: Callable[[bool], None]) -> None:
        """Registers how to take back the change just made (a data object, see the class docstring)."""
        self._undo.append(action)

    @contextlib.contextmanager
    def step(self, what: str, where: str) -> Iterator[None]:
        """Runs one patching step; any failure is re-raised naming the site.

        Args:
            what: What the step does (``"adding lora 'attn'"``).
            where: The site path (or delta name) it works on.

        Raises:
            RuntimeApplyError: Wrapping the original error, with the site and
                the cause in its message; AdaptErrors keep their notes.
        """
        try:
            yield
        except AdaptError as exc:
            diags = exc.diagnostics
            first = diags[0]
            raise RuntimeApplyError([Diagnostic(
                f"{what} failed at '{where}': {first.message}", obj=where, hint=first.hint,
                notes=first.notes)] + diags[1:]) from exc
        except Exception as exc:  # noqa: BLE001 - any failure must name its site
            raise RuntimeApplyError(Diagnostic(
                f"{what} failed at '{where}': {type(exc).__name__}: {exc}", obj=where)) from exc

    def rollback(self, removing: bool = False) -> list[BaseException]:
        """Undoes every registered change, newest first.

        Args:
            removing: Passed to every undo action (see the class docstring).

        Returns:
            Errors raised by undo actions (each is still attempted); empty
            when the model was fully restored.
        """
        errors: list[BaseException] = []
        while self._undo:
            action = self._undo.pop()
            try:
                action(removing)
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                errors.append(exc)
        return errors


# --------------------------------------------------------------------- patching
#: Delta kinds that live in a SiteModule part (prompt and tune are handled here).
SITE_KINDS = ("lora", "ia3", "adapter", "sparse")


@dataclass
class TaskConfig:
    """Everything ``use(task)`` sets, precomputed at apply time.

    Attributes:
        name: The task.
        deltas: Every delta of the task, in written order.
        sites: ``(site, [(delta, weight), ...])`` for every site that has parts.
        active_paths: Paths of the sites where the task activates something.
        trainable: Where the parameters of the task's non-frozen deltas live
            (:mod:`adaptlang.runtime.refs`: read when needed, never kept).
        trainable_ids: ``id()`` of each of those references, for fast membership.
        tune: What every tuned parameter slot holds under this task.
        prompt: The task's prompt delta, if any.
    """

    name: str
    deltas: list[str]
    sites: list[tuple[Any, list[tuple[str, float]]]]
    active_paths: list[str]
    trainable: list[Ref]
    trainable_ids: frozenset[int]
    tune: list[SlotAssignment]
    prompt: str | None

    # ``trainable_ids`` holds id()s, which name other objects in a deep copy or a
    # pickle: they are left out of the state and recomputed from ``trainable``.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["trainable_ids"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.trainable_ids = frozenset(id(p) for p in self.trainable)


@dataclass
class Patch:
    """The patches ``apply`` made to one model, and how to take them off.

    Attributes:
        model: The patched model.
        sites: Plan path -> ``SiteModule``, in the order they were wrapped.
        configs: Task name -> :class:`TaskConfig`, in declaration order.
        delta_params: Delta -> ``{"{site path}/{local name}": reference}`` (where each
            parameter lives; :mod:`adaptlang.runtime.refs`).
        prompts: The prompt deltas and their hook.
        tune: The tuned copies and the slots they go in.
        quantized: Paths of sites whose base weight is quantized.
        quant_report: ``{"path", "bytes_before", "bytes_after"}`` per quantized site.
        tx: The undo log (kept after apply: ``remove()`` replays it).
        base_ties: ``id()`` -> paths of each base parameter held in several slots,
            read before patching; None when the plan re-trains no parameter
            (then nothing ours ever swaps a tied slot).
        seed: The seed ``apply`` drew initial values from (``init_deltas`` draws them again).
        values_pending: ``apply`` met meta tensors: delta values and tune tensors outside the
            tree wait for ``init_deltas`` (:mod:`adaptlang.runtime.init_values`).
    """

    model: nn.Module
    prompts: PromptController
    tune: TuneSlots
    tx: Transaction
    sites: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, TaskConfig] = field(default_factory=dict)
    delta_params: dict[str, dict[str, Ref]] = field(default_factory=dict)
    quantized: set[str] = field(default_factory=set)
    quant_report: list[dict[str, Any]] = field(default_factory=list)
    site_snapshots: dict[str, ModuleSnapshot] = field(default_factory=dict)
    base_ties: dict[int, list[str]] | None = None
    seed: int = 0
    values_pending: bool = False

    def undo_all(self, removing: bool = True) -> None:
        """Takes every patch off (see :meth:`Transaction.rollback`).

        Raises:
            RuntimeApplyError: Some change could not be undone.
        """
        errors = self.tx.rollback(removing=removing)
        self.sites.clear()
        if errors:
            raise RuntimeApplyError(Diagnostic(
                f"could not undo every patch: {type(errors[0]).__name__}: {errors[0]}",
                notes=tuple(f"{type(e).__name__}: {e}" for e in errors[1:5])))


def check_not_adapted(model: nn.Module) -> None:
    """Refuses a model that already carries adaptlang patches."""
    from adaptlang.runtime.site import SiteModule

    if (HANDLE_ATTR in model.__dict__ or PROMPT_ATTR in model._modules or OUTSIDE_ATTR in model._modules
            or any(isinstance(m, SiteModule) for m in model.modules())):
        raise RuntimeApplyError(Diagnostic(
            "this model is already adapted", obj=type(model).__name__,
            hint="call remove() on the existing Adapted first"))


def _wrap_site(patch: Patch, path: str) -> Any:
    """Returns the SiteModule at ``path``, wrapping the module there if needed."""
    from adaptlang.runtime.site import SiteModule

    site = patch.sites.get(path)
    if site is not None:
        return site
    if not path:
        raise RuntimeApplyError("cannot wrap the root model itself")
    parent_path, name = split_path(path)
    parent = resolve_module(patch.model, parent_path, unwrap=True)
    original = parent._modules[name]
    snap = ModuleSnapshot(original)
    site = SiteModule.wrap(original)

    patch.tx.on_undo(UnwrapSite(patch, path, parent, name, original, snap, site))
    parent._modules[name] = site
    patch.sites[path] = site
    patch.site_snapshots[path] = snap
    return site


def _tied_weight_paths(patch: Patch, path: str) -> list[str]:
    """Returns the other paths of the weight at ``path`` (empty when it is not tied or not known)."""
    module = resolve_module(patch.model, path, unwrap=True)
    weight = module._parameters.get("weight")
    if weight is None or patch.base_ties is None:
        return []
    return [p for p in patch.base_ties.get(id(weight), []) if p != f"{path}.weight"]


def _quantize_sites(patch: Patch, plan_dict: dict[str, Any]) -> None:
    """Quantizes the base weights the plan's ``base.quantize`` lists."""
    for q in plan_dict.get("base", {}).get("quantize", []):
        path = q["path"]
        with patch.tx.step(f"quantizing ({q['format']})", path):
            tied = _tied_weight_paths(patch, path)
            if tied:
                # The other module keeps the Parameter whose storage quantizing frees.
                raise RuntimeApplyError(Diagnostic(
                    f"'{path}.weight' is tied to {', '.join(tied)}: quantizing it would empty the other module's "
                    "weight", obj=path, hint="compile the spec against this model, or untie the weights"))
            site = _wrap_site(patch, path)
            sizes = site.quantize(q["format"], q.get("block", 64), q.get("double", True),
                                  q.get("compute", "float32")) or {}
            patch.quantized.add(path)
            patch.quant_report.append({
                "path": path, "format": q["format"],
                "bytes_before": int(sizes.get("bytes_before", q.get("bytes_before", 0))),
                "bytes_after": int(sizes.get("bytes_after", q.get("bytes_after", 0)))})


def _add_deltas(patch: Patch, plan_dict: dict[str, Any], tokenizer: Any, seed: int) -> None:
    """Creates every delta's parameters at every site."""
    for delta, info in plan_dict["deltas"].items():
        kind = info["kind"]
        params: dict[str, Ref] = {}
        for site_dict in info["sites"]:
            path = site_dict["path"]
            gen = derive_generator(seed, delta, path)
            with patch.tx.step(f"adding {kind} '{delta}'", path):
                if patch.base_ties is not None and kind in ("tune", "sparse"):
                    check_site_ties(delta, site_dict, patch.model, patch.base_ties)
                if kind in SITE_KINDS:
                    site = _wrap_site(patch, path)
                    part = site.add_part(delta, kind, site_dict, gen)
                    for full in site_dict.get(SHARED, ()):
                        # Every tied name the sparse delta selects runs the same part: one set of values.
                        _wrap_site(patch, split_param_path(full)[0]).share_part(delta, part)
                    local = refs_of(part, list(part.adapter_params()))
                elif kind == "prompt":
                    if not patch.prompts.parts:
                        patch.tx.on_undo(RemovePrompts(patch.prompts))
                    prompt = patch.prompts.add(delta, site_dict, gen, tokenizer)
                    local = refs_of(prompt, list(prompt.adapter_params()))
                elif kind == "tune":
                    if not patch.tune.originals:
                        patch.tx.on_undo(RestoreTune(patch.tune))
                    copy = patch.tune.add(delta, site_dict)
                    key = (site_dict["path"], site_dict["param"])
                    local = {site_dict["param"]: TuneRef(patch.tune, delta, key, tuple(copy.shape))}
                else:
                    raise RuntimeApplyError(f"unknown delta kind '{kind}'")
            params.update({f"{path}/{name}": p for name, p in local.items()})
        patch.delta_params[delta] = params


def _build_config(patch: Patch, plan_dict: dict[str, Any], task: str) -> TaskConfig:
    """Precomputes what ``use(task)`` sets."""
    terms = plan_dict["tasks"][task]["deltas"]
    kinds = {name: d["kind"] for name, d in plan_dict["deltas"].items()}
    weights = {t["name"]: float(t.get("weight", 1.0)) for t in terms}
    sites = []
    for path, site in patch.sites.items():
        if len(site.parts) == 0:
            continue
        active = [(t["name"], weights[t["name"]]) for t in terms if t["name"] in site.parts]
        sites.append((site, active))
    trainable: dict[int, Ref] = {}
    for t in terms:
        if not t.get("frozen", False):
            trainable.update((id(ref), ref) for ref in patch.delta_params[t["name"]].values())
    prompts = [t["name"] for t in terms if kinds[t["name"]] == "prompt"]
    tunes = [t["name"] for t in terms if kinds[t["name"]] == "tune"]
    return TaskConfig(
        name=task, deltas=[t["name"] for t in terms], sites=sites,
        active_paths=[path for path, site in patch.sites.items() if any(d in site.parts for d in weights)],
        trainable=list(trainable.values()), trainable_ids=frozenset(trainable),
        tune=patch.tune.assignments_for(tunes, task), prompt=prompts[0] if prompts else None)


def patch_model(model: nn.Module, plan_dict: dict[str, Any], *, tokenizer: Any = None, seed: int = 0,
                keep_base: bool = False) -> Patch:
    """Patches ``model`` with every delta of a plan, all or nothing.

    Args:
        model: The model, changed in place.
        plan_dict: ``Plan.to_dict()``.
        tokenizer: For prompts initialised from text.
        seed: Seeds each (delta, site)'s initial values.
        keep_base: Keep quantized sites' original weights (exact ``remove()``).

    Returns:
        The :class:`Patch`; every delta parameter starts with ``requires_grad`` False.

    Raises:
        RuntimeApplyError: Naming the site that failed; the model is unchanged.
    """
    with collection_paused():
        return _patch(model, plan_dict, tokenizer, seed, keep_base)


def _has_param_sites(plan_dict: dict[str, Any]) -> bool:
    """True when the plan re-trains (tune, sparse) or quantizes base parameters: their ties must be checked."""
    return bool(plan_dict.get("base", {}).get("quantize")) or any(
        d["kind"] in ("tune", "sparse") and d["sites"] for d in plan_dict["deltas"].values())


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector for the duration (restored on exit, even on error).

    Why: patching creates thousands of small objects (modules, parameters,
    undo actions) that are all kept; each allocation burst would otherwise
    trigger collections that walk the whole heap, a large model's included,
    for nothing to free: about a tenth of an apply, sometimes far more.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _patch(model: nn.Module, plan_dict: dict[str, Any], tokenizer: Any, seed: int, keep_base: bool) -> Patch:
    """:func:`patch_model`'s body."""
    patch = Patch(model=model, prompts=PromptController(model), tune=TuneSlots(model), tx=Transaction(), seed=seed)
    # Only plans that re-train parameters pay for this walk (applying a LoRA plan stays as fast as it was).
    patch.base_ties = find_tied_paths(model) if _has_param_sites(plan_dict) else None
    flags = snapshot_flags(model)
    patch.values_pending = any(p.is_meta for p, _ in flags.flags)
    patch.tx.on_undo(RestoreFlags(flags))
    try:
        for p, _ in flags.flags:
            p.requires_grad_(False)
        _quantize_sites(patch, plan_dict)
        _add_deltas(patch, plan_dict, tokenizer, seed)
        for params in patch.delta_params.values():
            for ref in params.values():
                ref.get().requires_grad_(False)
        for task in plan_dict["tasks"]:
            with patch.tx.step("preparing task", task):
                patch.configs[task] = _build_config(patch, plan_dict, task)
                for site, active in patch.configs[task].sites:
                    site.prepare(active)  # so that use(task) only assigns precomputed programs
    except BaseException as exc:
        errors = patch.tx.rollback()
        if errors and isinstance(exc, AdaptError):
            raise RuntimeApplyError(exc.diagnostics + [Diagnostic(
                f"and undoing the patch failed too: {errors[0]}", severity="error")]) from exc
        raise
    if not keep_base:
        # The originals were held only so a failed apply could restore them exactly.
        for path in patch.quantized:
            patch.site_snapshots[path].release_quantized()
    if attach_outside(patch):
        patch.tx.on_undo(Detach(model, "_modules", OUTSIDE_ATTR))
    return patch
