"""The user-facing :class:`BundleAdapted`: the runtime's ``Adapted`` plus saving and PEFT export.

``adaptlang.apply`` and ``adaptlang.load`` return this class. The runtime
never imports this layer; it builds the handle through ``apply(...,
adapted_cls=BundleAdapted)``, and this layer records what a bundle needs
beyond the runtime's state: the spec source (provenance) per task and the
base model's structure, read before any module was wrapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from adaptlang.bundles.bundle import TASK_NAME, build_bundle, check_storage_dtype, write_bundles
from adaptlang.bundles.files import make_folder
from adaptlang.bundles.manifest import Provenance, describe_structure, restrict_plan
from adaptlang.bundles.ranks import on_rank_zero
from adaptlang.errors import Diagnostic, UsageError, did_you_mean
from adaptlang.runtime.adapted import Adapted
from adaptlang.runtime.adapted import apply as runtime_apply
from adaptlang.runtime.shards import same_on_every_rank

__all__ = ["BundleAdapted", "apply_spec_or_plan", "apply_with_provenance"]


class BundleAdapted(Adapted):
    """An :class:`~adaptlang.runtime.adapted.Adapted` that can save bundles and export PEFT adapters.

    Attributes:
        load_report: For a handle from ``adaptlang.load``: what was shared,
            renamed or (with ``strict=False``) skipped; empty otherwise.
    """

    def __init__(self, model: nn.Module, plan: Any, patch: Any):
        super().__init__(model, plan, patch)
        self._provenance: dict[str, Provenance] = {}
        self._structure: dict[str, str] = {}
        self.load_report: dict[str, list[str]] = {}

    def _set_origin(self, provenance: dict[str, Provenance], structure: dict[str, str]) -> None:
        """Records each task's provenance and the unpatched model's structure."""
        self._provenance = dict(provenance)
        self._structure = dict(structure)

    def provenance(self, task: str) -> Provenance:
        """Returns where a task came from (spec source, whole plan's sha256)."""
        self._config(task)
        return self._provenance.get(task) or Provenance(None, {}, {}, self.plan.sha256)

    def task_plan(self, task: str) -> dict[str, Any]:
        """Returns the plan JSON dict restricted to ``task`` (what its bundle embeds)."""
        from adaptlang.plan.plan import Plan

        self._config(task)
        return Plan(restrict_plan(self.plan.to_dict(), [task])).to_dict()

    def bundle_tensors(self, task: str) -> dict[str, torch.Tensor]:
        """Returns everything a task's bundle stores: its deltas' parameters, and sparse positions.

        Keys are ``"{delta}/{site path}/{local name}"``; values share storage.
        """
        tensors = self.adapter_state_dict(task)
        for delta in self._config(task).deltas:
            tensors.update({f"{delta}/{k}": b for k, b in self.delta_buffers(delta).items()})
        return tensors

    def full_bundle_tensors(self, task: str) -> dict[str, torch.Tensor]:
        """Returns :meth:`bundle_tensors` as full CPU copies, gathered when the model is sharded.

        Collective on a sharded model (FSDP2, FSDP1, DeepSpeed ZeRO-3): every rank must call it
        (:meth:`~adaptlang.runtime.adapted.Adapted.full_adapter_state_dict`).
        """
        tensors = self.full_adapter_state_dict(task)
        for delta in self._config(task).deltas:
            # Buffers (sparse positions) are never sharded: every rank holds them whole.
            tensors.update({f"{delta}/{k}": b.detach().to("cpu", copy=True)
                            for k, b in self.delta_buffers(delta).items()})
        return tensors

    def save(self, folder: str | Path, tasks: Iterable[str] | None = None,
             dtype: torch.dtype | None = None, training: dict[str, Any] | None = None) -> list[Path]:
        """Writes one self-describing bundle per task: ``folder/<task>.safetensors``.

        Every file is written to a temporary next to it and renamed into place
        only once all of them are written, so a failure leaves the previous
        files as they were. A merged model saves the same bundles as unmerged:
        bundles hold the delta parameters, never the (merged) base weights.

        On a sharded model (FSDP2, FSDP1, DeepSpeed ZeRO-3) every rank must call ``save``
        with the same arguments: the full values are gathered collectively,
        rank 0 writes the files, and the other ranks wait for it and get its
        outcome (rank 0's error is raised on every rank). Unsharded (one
        process, DDP) it writes from the rank that calls it: under DDP every
        rank holds the same values, so call it on rank 0 alone or on all
        (the same bytes; each file is replaced atomically).

        Args:
            folder: Created if missing.
            tasks: Which tasks (default: all, in declaration order).
            dtype: Store floating tensors in this dtype (``torch.bfloat16``
                halves the files); loading casts back to the model's.
            training: A training record to store in each bundle's manifest
                (``adaptc train`` writes one; see
                :mod:`~adaptlang.bundles.training_record`).

        Returns:
            The bundle paths, one per task, in order.

        Raises:
            UsageError: An unknown task; a ``dtype`` that is not floating point (int8, bool, ...);
                nothing is written then.
            BundleError: The folder cannot be written; a malformed training record.
        """
        from adaptlang import __version__

        self._check_live()
        check_storage_dtype(dtype)  # before the folder is made or a file written
        names = list(self.tasks if tasks is None else tasks)
        for task in names:
            if task not in self.tasks:
                raise UsageError(Diagnostic(f"unknown task '{task}'", obj=task, hint=did_you_mean(task, self.tasks),
                                            notes=(f"tasks: {', '.join(self.tasks)}",)))
            if not TASK_NAME.match(task):
                raise UsageError(Diagnostic(f"task name '{task}' cannot be a file name", obj=task))
        folder = Path(folder)
        if not self.sharded():
            folder = make_folder(folder)
            bundles = [
                build_bundle(folder / f"{task}.safetensors", task, self.task_plan(task), self.bundle_tensors(task),
                             self.provenance(task), self._structure, __version__, dtype, training)
                for task in names
            ]
            return write_bundles(bundles)
        same_on_every_rank((names, str(dtype)), "the ranks called save(tasks=..., dtype=...) with different "
                           "arguments; on a sharded model every rank must pass the same")
        tensors = {task: self.full_bundle_tensors(task) for task in names}  # collective: every rank gathers

        def write() -> list[Path]:
            where = make_folder(folder)
            return write_bundles([
                build_bundle(where / f"{task}.safetensors", task, self.task_plan(task), tensors[task],
                             self.provenance(task), self._structure, __version__, dtype, training)
                for task in names])

        return on_rank_zero(write, [folder / f"{task}.safetensors" for task in names])

    def export_peft(self, folder: str | Path, task: str | None = None, base_model: str | None = None) -> Path:
        """Writes a task as a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

        Args:
            folder: The adapter folder (created if missing).
            task: The task (default: the active one).
            base_model: ``base_model_name_or_path`` in the config (default:
                the plan's model name).

        Returns:
            The folder.

        Raises:
            BundleError: A task PEFT cannot express, naming the deltas at fault.
        """
        from adaptlang.bundles.peft_export import export_peft_adapter

        self._check_live()
        task = task or self.active_task
        if not self.sharded():
            tensors = {k: v.detach().to("cpu") for k, v in self.bundle_tensors(task).items()}
            return export_peft_adapter(self.task_plan(task), task, tensors, Path(folder),
                                       structure=self._structure, base_model=base_model)
        same_on_every_rank(task, "the ranks called export_peft(task=...) with different tasks (default: the "
                           "active task); on a sharded model every rank must pass the same")
        full = self.full_bundle_tensors(task)  # collective, as save()
        return on_rank_zero(lambda: export_peft_adapter(self.task_plan(task), task, full, Path(folder),
                                                        structure=self._structure, base_model=base_model),
                            Path(folder))


def _spec_of(spec_or_plan: Any, overrides: dict[str, float] | None) -> Any:
    """Returns the checked Spec when given spec text, a path or a Spec; None for a plan."""
    from adaptlang.plan.compiler import load_spec_for_compile
    from adaptlang.plan.plan import Plan
    from adaptlang.spec.model import Spec

    if isinstance(spec_or_plan, Plan):
        return None
    if isinstance(spec_or_plan, (str, Path)) and str(spec_or_plan).endswith(".json"):
        return None
    if isinstance(spec_or_plan, Spec) and not overrides:
        return spec_or_plan
    return load_spec_for_compile(spec_or_plan, overrides)


def apply_with_provenance(model: nn.Module, spec_or_plan: Any, *, overrides: dict[str, float] | None = None,
                          **kwargs: Any) -> BundleAdapted:
    """``adaptlang.apply`` for users: patches ``model`` and remembers the spec for bundles.

    Args:
        model: The model, patched in place.
        spec_or_plan: A spec path, spec text, a ``Spec``, a ``Plan`` or a plan JSON file.
        overrides: ``let`` constants to replace (as ``adaptc compile --set``).
        **kwargs: ``task``, ``tokenizer``, ``seed``, ``keep_base`` (see
            :func:`adaptlang.runtime.adapted.apply`).

    Returns:
        The :class:`BundleAdapted`.
    """
    spec = _spec_of(spec_or_plan, overrides)  # the runtime refuses an adapted model before patching
    return apply_spec_or_plan(model, spec if spec is not None else spec_or_plan, spec, overrides, **kwargs)


def apply_spec_or_plan(model: nn.Module, target: Any, spec: Any, overrides: dict[str, float] | None = None,
                       **kwargs: Any) -> BundleAdapted:
    """Applies ``target`` (a Spec or a Plan) and records ``spec`` (or None) as every task's provenance.

    Args:
        model: The model, not adapted yet.
        target: What the runtime applies: the checked Spec, or a Plan compiled from it.
        spec: The checked Spec the tasks come from, or None.
        overrides: ``let`` constants that were replaced.
        **kwargs: As for :func:`apply_with_provenance`.
    """
    from adaptlang.plan.signature import signature_of

    sig = signature_of(model)  # before any module is wrapped; read once, for both uses
    structure = describe_structure(sig)
    adapted = runtime_apply(model, target, adapted_cls=BundleAdapted, signature=sig, **kwargs)
    assert isinstance(adapted, BundleAdapted)
    provenance = {}
    if spec is not None:
        origin = Provenance.from_spec(spec, adapted.plan.sha256, overrides)
        provenance = {task: origin for task in adapted.tasks}
    adapted._set_origin(provenance, structure)
    return adapted
