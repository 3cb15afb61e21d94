"""Delta parameters of :class:`~adaptlang.runtime.adapted.Adapted`: listing, reading, loading, gathering.

A mixin on the handle's ``_patch``, ``_active``, ``_merged`` and ``model``.
Every method reads the parameters through their references
(:mod:`adaptlang.runtime.refs`), so it sees the objects the model holds
now, sharded ones included (:mod:`adaptlang.runtime.shards`).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from adaptlang.errors import BundleError, Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.concurrency import changes_model
from adaptlang.runtime.engines import wrap_ddp
from adaptlang.runtime.quant import storage_parameters
from adaptlang.runtime.init_values import reshard, write_full
from adaptlang.runtime.shards import FSDP1, gather_full, model_engine, refuse_zero3_writes

__all__ = ["ParameterMethods"]


class ParameterMethods:
    """The parameter methods of :class:`~adaptlang.runtime.adapted.Adapted` (a mixin)."""

    _patch: Any
    _active: str | None
    _merged: bool
    model: nn.Module
    _check_live: Any  # the handle's: raises once removed
    _config: Any  # the handle's: a task's TaskConfig, or raises

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Returns ``(name, parameter)`` of the active task's trainable deltas, in model order.

        The parameters are the ones the model holds now: after FSDP2's
        ``fully_shard`` the sharded ones, so an optimizer built from this list
        trains what the forward uses.
        """
        self._check_live()
        reshard(self.model)  # after a no-grad forward FSDP2's root holds unsharded copies it will drop
        wanted = {id(ref.get()) for ref in self._patch.configs[self._active].trainable}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) in wanted]

    def parameters(self) -> Iterator[nn.Parameter]:
        """Yields the active task's trainable parameters: what an optimizer takes.

        Like ``nn.Module.parameters()``, but only what trains:
        ``torch.optim.AdamW(adapted.parameters(), lr=1e-4)``. The same tensors,
        in the same (model) order, as :meth:`trainable_parameters` without
        their names; the list is read when the iterator is made, so a later
        ``use()`` does not change an iterator already handed out.

        Raises:
            RuntimeApplyError: The handle was removed.
        """
        return iter([p for _, p in self.trainable_parameters()])

    def delta_parameters(self, delta: str) -> dict[str, nn.Parameter]:
        """Returns a delta's parameters keyed ``"{site path}/{local name}"``, as the model holds them now.

        On a sharded model these are the shards (FSDP2 ``DTensor``\ s, FSDP1
        views); :meth:`full_adapter_state_dict` gathers full values.

        Raises:
            RuntimeApplyError: Unknown delta.
        """
        refs = self._delta_refs(delta)
        reshard(self.model)  # the shards, not FSDP2's temporary full copies (a write there would be dropped)
        return {key: ref.get() for key, ref in refs.items()}

    def sharded(self) -> str | None:
        """Returns the engine that shards the model (FSDP2, FSDP1, ZeRO-3), or None (:func:`~adaptlang.runtime.shards.model_engine`).

        The same on every rank of a sharded model, so callers may branch on it
        before a collective (``save``).
        """
        self._check_live()
        return model_engine(self.model)

    @changes_model("init_deltas")
    def init_deltas(self, tokenizer: Any = None) -> dict[str, int]:
        """Gives every delta parameter the initial value ``apply`` would have given on the real model.

        For a model applied on the meta device, then sharded (FSDP2), moved
        with ``model.to_empty(device=...)`` and loaded with its base weights:
        the values equal, bit for bit, those of ``apply(real_model, spec,
        seed=<apply's seed>)``, the same on every rank and for any world size.
        DoRA magnitudes, prompts from ``vocab``/``text`` and ``tune`` copies
        read the loaded base values (gathered: a collective, so every rank must
        call this). See :mod:`adaptlang.runtime.init_values`.

        Args:
            tokenizer: For prompts initialised from text (the one given to ``apply``).

        Returns:
            Delta -> the number of values written (full sizes).

        Raises:
            RuntimeApplyError: Merged; a tensor still on the meta device; one
                sharded by FSDP1 or ZeRO-3 (initialise before wrapping); a text
                prompt without a tokenizer; a prompt on a non-plain embedding;
                DoRA on sharded quantized storage.
        """
        from adaptlang.runtime.init_values import init_deltas

        self._check_live()
        if self._merged:
            raise RuntimeApplyError(Diagnostic("init_deltas() on a merged model", hint="unmerge() first"))
        return init_deltas(self._patch, self.plan.to_dict(), tokenizer)

    def quantized_storage(self) -> list[nn.Parameter]:
        """Returns the frozen integer parameters holding the quantized base (codes and scales), model order.

        FSDP2 shards them like any parameter. FSDP1 flattens floating tensors
        only (its error: "Must flatten tensors with uniform dtype"): pass
        ``FullyShardedDataParallel(..., ignored_states=adapted.quantized_storage())``;
        each rank then keeps the whole quantized base.
        """
        self._check_live()
        return storage_parameters(self.model)

    def wrap_ddp(self, **ddp_kwargs: Any) -> nn.Module:
        """Returns ``DistributedDataParallel(self.model, **ddp_kwargs)`` for the active task.

        After a ``use()`` that changes which parameters train, the wrapper
        refuses to run (DDP fixed its parameter list when built): wrap again.
        See :mod:`adaptlang.runtime.engines`.
        """
        return wrap_ddp(self, **ddp_kwargs)

    def _delta_refs(self, delta: str) -> dict[str, Any]:
        """A delta's parameter references (:mod:`adaptlang.runtime.refs`), or raises for an unknown delta."""
        self._check_live()
        refs = self._patch.delta_params.get(delta)
        if refs is None:
            raise RuntimeApplyError(Diagnostic(
                f"unknown delta '{delta}'", obj=delta, hint=did_you_mean(delta, self._patch.delta_params)))
        return refs

    def delta_buffers(self, delta: str) -> dict[str, torch.Tensor]:
        """Returns a delta's non-trainable state that a bundle must keep (sparse ``indices``).

        Keys are ``"{site path}/{local name}"`` like :meth:`delta_parameters`;
        empty for kinds without such state. Values are the live buffers.

        Raises:
            RuntimeApplyError: Unknown delta.
        """
        # Its sites' paths: a sparse part shared by a tied tensor's other slots is stored once, at its site.
        paths = {key.rpartition("/")[0] for key in self.delta_parameters(delta)}
        found: dict[str, torch.Tensor] = {}
        for path, site in self._patch.sites.items():
            if delta in site.parts and path in paths:
                found.update({f"{path}/{name}": b for name, b in site.adapter_buffers(delta).items()})
        return found

    def adapter_state_dict(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Returns a task's bundle: every parameter of its deltas (frozen ones too).

        Keys are ``"{delta}/{site path}/{local name}"``, derived from each
        part's ``adapter_params()``; values are detached tensors sharing storage.

        Args:
            task: A task name (default: the active task).
        """
        self._check_live()
        config = self._config(task or self._active)
        reshard(self.model)  # as delta_parameters: the shards themselves
        return {
            f"{delta}/{key}": ref.get().detach()
            for delta in config.deltas
            for key, ref in self._patch.delta_params[delta].items()
        }

    def full_adapter_state_dict(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Returns :meth:`adapter_state_dict` with full values: new CPU tensors, gathered if sharded.

        On a sharded model (FSDP2, FSDP1, DeepSpeed ZeRO-3) this is
        collective: every rank must call it
        (:func:`~adaptlang.runtime.shards.gather_full`); each gets the same
        full tensors.

        Raises:
            RuntimeApplyError: A shard that cannot be gathered (no process
                group, ZeRO-3 without deepspeed importable, a gathered size
                that is not the full shape's).
        """
        self._check_live()
        config = self._config(task or self._active)
        refs = {f"{delta}/{key}": ref for delta in config.deltas
                for key, ref in self._patch.delta_params[delta].items()}
        return gather_full({k: ref.get() for k, ref in refs.items()}, {k: ref.shape for k, ref in refs.items()})

    @changes_model("load_adapter_state_dict")
    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor], task: str | None = None) -> None:
        """Copies a task's bundle values into its delta parameters.

        Args:
            state_dict: As :meth:`adapter_state_dict` returns.
            task: The task it belongs to (default: the active task).

        Raises:
            BundleError: Missing or unexpected keys, or shapes that differ.
            RuntimeApplyError: Merged; or parameters sharded by DeepSpeed
                ZeRO-3 (load before ``deepspeed.initialize``:
                :func:`~adaptlang.runtime.shards.refuse_zero3_writes`).
        """
        self._check_live()
        if self._merged:
            raise RuntimeApplyError("unmerge() before loading adapter weights")
        config = self._config(task or self._active)
        # The live parameters: adapter_state_dict's detached views do not carry ZeRO-3's marks.
        refuse_zero3_writes([ref.get() for delta in config.deltas for ref in self._patch.delta_params[delta].values()],
                            "load_adapter_state_dict()")
        if model_engine(self.model) == FSDP1:
            # Each rank holds a 1-D slice of a flat parameter; which slice is FSDP1's business.
            raise RuntimeApplyError(Diagnostic(
                "load_adapter_state_dict() is not supported on a model wrapped by FSDP1",
                hint="load the values before wrapping (adaptlang.load, or this call on the unwrapped model)"))
        target = self.adapter_state_dict(task)  # the shards (it reshards FSDP2's root first)
        missing = sorted(set(target) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(target))
        bad = [k for k in target if k in state_dict and tuple(state_dict[k].shape) != tuple(target[k].shape)]
        if missing or unexpected or bad:
            notes = [f"missing: {k}" for k in missing[:5]] + [f"unexpected: {k}" for k in unexpected[:5]]
            notes += [f"shape of {k}: {tuple(state_dict[k].shape)} != {tuple(target[k].shape)}" for k in bad[:5]]
            raise BundleError(Diagnostic(
                f"adapter weights do not fit task '{task or self._active}'", obj=task or self._active,
                notes=tuple(notes)))
        with torch.no_grad():
            for key, value in state_dict.items():
                write_full(target[key], value, key)  # an FSDP2 shard takes its own part of the value
