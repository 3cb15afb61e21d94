"""``apply`` and :class:`Adapted`: a plan bound to a real model, with task switching.

``apply`` compiles (or checks) the plan, patches the model in place inside a
transaction (:mod:`adaptlang.runtime.transaction`), precomputes what every task
activates, and activates one. Switching tasks then only flips precomputed
site configurations, parameter slots and ``requires_grad`` flags.

Quantized sites: ``remove()`` gives back the same module and parameter
objects, holding *dequantized* values — unless ``apply(..., keep_base=True)``
kept the original weights (then exact, at the cost of the memory saved).

Threads: calls through the handle (``adapted(...)``, ``adapted(..., tasks=...)``)
may run concurrently; ``use()``, ``merge()``, ``unmerge()``, ``remove()`` and
``load_adapter_state_dict()`` change the model for every caller and wait
until no call runs (:mod:`adaptlang.runtime.concurrency`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, UsageError, did_you_mean
from adaptlang.runtime.binding import bind_plan
from adaptlang.runtime.concurrency import CallGate, changes_model
from adaptlang.runtime.copying import attach_handle, deepcopy_handle, handle_of, shallow_copy_error
from adaptlang.runtime.adapted_merge import MergeMethods, tied_parameter_ids
from adaptlang.runtime.adapted_params import ParameterMethods
from adaptlang.runtime.mixed import run_mixed, run_plain
from adaptlang.runtime.init_values import reshard
from adaptlang.runtime.shards import check_not_wrapped, refuse_fsdp1_call, refuse_if_sharded
from adaptlang.runtime.transaction import Patch, TaskConfig, check_not_adapted, patch_model

__all__ = ["Adapted", "apply", "tied_parameter_ids"]


class TaskSwitch:
    """What ``Adapted.use`` returns: the switch is done; ``with`` restores the previous task."""

    def __init__(self, adapted: "Adapted", previous: str):
        self._adapted = adapted
        self.previous = previous

    def __enter__(self) -> "Adapted":
        return self._adapted

    def __exit__(self, *exc: object) -> None:
        self._adapted.use(self.previous)


class Adapted(ParameterMethods, MergeMethods):
    """A model patched with a plan's deltas; one task active at a time.

    Build it with :func:`apply`. The active task is model state, shared by
    every caller: a server choosing a task per request passes
    ``adapted(..., tasks=[...])``, which is safe from several threads at once;
    ``use()`` switches the model for everyone (it waits for running calls).

    Attributes:
        model: The model object passed to ``apply``, patched in place.
        plan: The bound :class:`~adaptlang.plan.plan.Plan`.
    """

    def __init__(self, model: nn.Module, plan: Any, patch: Patch):
        self.model = model
        self.plan = plan
        self._patch = patch
        self._active: str | None = None
        self._trainable_now: list[Any] = []  # the active task's trainable references (runtime.refs)
        self._trainable_epoch = 0  # bumped whenever the trainable set changes (runtime.engines)
        self._merged = False
        self._merged_paths: list[str] = []
        self._merge_report: dict[str, Any] = {}
        self._removed = False
        self._gate = CallGate()  # forwards share it; use/merge/unmerge/remove/loading hold it alone

    # ----------------------------------------------------------------- tasks
    @property
    def tasks(self) -> list[str]:
        """Task names, in declaration order."""
        return list(self._patch.configs)

    @property
    def active_task(self) -> str | None:
        """The task now active (None once removed)."""
        return self._active

    @changes_model("use")
    def use(self, task: str) -> TaskSwitch:
        """Activates exactly ``task``'s deltas, with its weights and order, and its trainability.

        A merged model is unmerged first. Also a context manager:
        ``with adapted.use("qa"): ...`` switches back on exit.

        The switch is for every caller of the model, not for this thread: it
        waits until no call through this handle runs, and calls arriving
        meanwhile wait for it. To pick a task per call (a server), pass
        ``adapted(**batch, tasks=[task] * batch_size)`` instead.

        Args:
            task: A task name.

        Returns:
            A :class:`TaskSwitch` (usable with ``with``).

        Raises:
            UsageError: ``task`` is not a task name (a str), or ``use`` was
                called from inside a forward of this model (a hook).
            RuntimeApplyError: Unknown task (with a did-you-mean), or removed.
        """
        self._check_live()
        config = self._config(task)
        previous = self._active
        if self._merged:
            self.unmerge()
        activate_config(config, self._patch)
        # Only flags that change are touched: tasks often share deltas.
        # Flags go on the parameters the model holds now (an engine may have replaced the objects).
        new = config.trainable
        if self._trainable_now is not new:
            # After a no-grad forward FSDP2's root holds stand-in unsharded parameters: a flag set on one
            # would never reach the sharded parameter the optimizer steps.
            reshard(self.model)
            keep = config.trainable_ids
            for ref in self._trainable_now:
                if id(ref) not in keep:
                    ref.get().requires_grad_(False)
            for ref in new:
                ref.get().requires_grad_(True)
            if keep != frozenset(id(ref) for ref in self._trainable_now):
                self._trainable_epoch += 1  # engines built on the old set (a DDP wrapper) are stale now
        self._trainable_now = new
        self._active = task
        return TaskSwitch(self, previous if previous is not None else task)

    def _config(self, task: str) -> TaskConfig:
        """Returns a task's precomputed configuration, or raises with a suggestion."""
        if not isinstance(task, str):
            raise UsageError(Diagnostic(
                f"expected a task name (a str), got {type(task).__name__} {task!r}", obj="task",
                notes=(f"tasks: {', '.join(self._patch.configs)}",)))
        config = self._patch.configs.get(task)
        if config is None:
            raise RuntimeApplyError(Diagnostic(
                f"unknown task '{task}'", obj=task, hint=did_you_mean(task, self._patch.configs),
                notes=(f"tasks: {', '.join(self._patch.configs)}",)))
        return config

    # ----------------------------------------------------------------- other
    def memory_report(self) -> dict[str, Any]:
        """Returns base memory before/after quantization, per site and in total."""
        sites = [dict(entry) for entry in self._patch.quant_report]
        before = sum(e["bytes_before"] for e in sites)
        after = sum(e["bytes_after"] for e in sites)
        return {"sites": sites, "bytes_before": before, "bytes_after": after, "bytes_saved": before - after}

    def summary(self) -> str:
        """Returns the per-task table, as ``adaptc compile`` prints it."""
        return self.plan.summary()

    def __call__(self, *args: Any, tasks: list[str | None] | None = None, **kwargs: Any) -> Any:
        """Calls the model; with ``tasks``, each batch row runs under its own task, in one forward.

        Safe from several threads at once, with or without ``tasks`` (each
        call's rows travel with the call); ``use()`` and the other changes
        wait for running calls. Calling ``adapted.model(...)`` directly skips
        that guard.

        Args:
            *args, **kwargs: The model call.
            tasks: One task name per batch row (None: the bare base model); see
                :mod:`adaptlang.runtime.mixed`. The active task is unchanged afterwards.
        """
        if tasks is None:
            return run_plain(self, args, kwargs)
        return run_mixed(self, args, kwargs, tasks)

    def generate(self, *args: Any, tasks: list[str | None] | None = None, **kwargs: Any) -> Any:
        """``model.generate(...)``; with ``tasks``, each input row generates under its own task.

        Rows keep their tasks through the whole decoding, KV cache, beams and
        ``num_return_sequences`` included (each row's beams and sequences run
        its task; :func:`~adaptlang.runtime.mixed.expansion`), and each row's
        tokens equal that row generated alone under its task. Like
        ``__call__``, safe beside other threads' calls.

        Args:
            *args, **kwargs: ``generate``'s arguments.
            tasks: One task name per input row (None: the bare base model).

        Raises:
            UsageError, RuntimeApplyError: As ``__call__`` with ``tasks``.
        """
        if tasks is None:
            with self._gate.forward():
                self._check_live()
                refuse_fsdp1_call(self.model)
                return self.model.generate(*args, **kwargs)
        return run_mixed(self, args, kwargs, tasks, generate=True)

    @changes_model("remove")
    def remove(self) -> nn.Module:
        """Takes every patch off: the model exactly as before ``apply``.

        Same module objects at every path, same parameter objects, the same
        ``requires_grad`` flags; values bit-identical in every dtype, merged or
        not (a merge keeps the originals it needs: :meth:`merge`), except after
        ``merge(keep="none")`` (within rounding), after a down-cast while
        merged (the originals, rounded once) and for quantized sites (see the module
        docstring). The ``Adapted`` is unusable afterwards.

        Returns:
            The model.
        """
        self._check_live()
        refuse_if_sharded(self.model, "remove()",
                          "save() the bundles; the base model is the one you sharded, without them: load its "
                          "checkpoint again, unsharded, to get it back")
        if self._merged:
            self.unmerge()
        self._patch.undo_all(removing=True)
        self._removed = True
        self._active = None
        return self.model

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeApplyError("this Adapted was removed; call adaptlang.apply again")

    # ----------------------------------------------------------------- copies
    @classmethod
    def of(cls, model: nn.Module) -> "Adapted":
        """Returns the handle of an adapted model, or of a deep or unpickled copy of one.

        See :mod:`adaptlang.runtime.copying` (also ``adaptlang.handle(model)``).

        Raises:
            UsageError: The model carries no live patch.
        """
        return handle_of(model)

    def __deepcopy__(self, memo: dict[int, Any]) -> "Adapted":
        """An independent handle on an independent copy of the model (the plan is shared).

        Waits for running calls (a call may have swapped tune copies into the
        model for its rows), like :meth:`exclusive`.
        """
        with self._gate.change("copy.deepcopy"):
            return deepcopy_handle(self, memo)

    def exclusive(self) -> Any:
        """A context manager that holds the model still: running calls finish, new ones wait until it exits.

        For reading the whole model while other threads serve it:
        ``with adapted.exclusive(): torch.save(adapted.model, f)`` (a call
        with ``tasks=`` may swap re-trained (``tune``) parameters into the
        model while it runs; ``copy.deepcopy(model)`` or ``torch.save(model)``
        at that moment would copy them). ``copy.deepcopy(adapted)`` does this
        by itself.

        Raises:
            UsageError: Entered from inside a forward of the model on the same thread.
        """
        return self._gate.change("exclusive")

    def __copy__(self) -> "Adapted":
        """Refused: a shallow copy would be a second handle on the same model (UsageError)."""
        raise shallow_copy_error(self)

    def __repr__(self) -> str:
        return f"Adapted({type(self.model).__name__}, tasks={self.tasks}, active={self._active!r})"


def activate_config(config: TaskConfig, patch: Patch) -> None:
    """Sets every parameter slot, site and the prompt as ``config`` says.

    The slots go first: that step may refuse (a sharded slot,
    :meth:`~adaptlang.runtime.tune.TuneSlots.activate`), and then nothing has changed.
    """
    patch.tune.activate(config.tune)
    for site, active in config.sites:
        site.set_active(active)
    patch.prompts.set_active(config.prompt)


def apply(model: nn.Module, spec_or_plan: Any, *, task: str | None = None, tokenizer: Any = None,
          seed: int = 0, keep_base: bool = False, adapted_cls: type[Adapted] = Adapted,
          signature: Any = None) -> Adapted:
    """Patches ``model`` in place with a spec's or plan's deltas and activates one task.

    Args:
        model: The model (an ``nn.Module``), patched in place.
        spec_or_plan: A ``.adapt`` path, spec text, a ``Spec`` (compiled
            against ``model``), or a ``Plan`` (its fingerprint must match).
        task: The task to activate (default: the first).
        tokenizer: Needed by prompts initialised from text.
        seed: Seeds every delta's initial values (per delta and site).
        keep_base: Keep the original weights of quantized sites so that
            ``remove()`` restores them exactly.
        adapted_cls: The class of the handle to build (a subclass of
            :class:`Adapted`; the bundles layer adds saving and export).
        signature: ``model``'s signature, if the caller has read it already.

    Returns:
        The :class:`Adapted` handle.

    Raises:
        RuntimeApplyError: A model that does not fit the plan, an unknown
            task, or a failure while patching (the model is then unchanged).
        SpecError, BindError: From compiling a spec.
    """
    check_not_adapted(model)
    check_not_wrapped(model)
    plan = bind_plan(model, spec_or_plan, signature)
    plan_dict = plan.to_dict()
    if task is not None and task not in plan_dict["tasks"]:
        raise RuntimeApplyError(Diagnostic(
            f"unknown task '{task}'", obj=task, hint=did_you_mean(task, plan_dict["tasks"]),
            notes=(f"tasks: {', '.join(plan_dict['tasks'])}",)))
    first = task or next(iter(plan_dict["tasks"]))
    patch = patch_model(model, plan_dict, tokenizer=tokenizer, seed=seed, keep_base=keep_base)
    adapted = adapted_cls(model, plan, patch)
    try:
        attach_handle(adapted)
        adapted.use(first)
    except Exception:
        patch.undo_all(removing=False)
        raise
    return adapted
