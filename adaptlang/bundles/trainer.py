"""Bundles from Hugging Face ``Trainer`` runs: :class:`BundleCallback`.

The ``Trainer`` checkpoints a model through ``save_pretrained`` (a whole
state dict, or with FSDP/DeepSpeed whatever the engine hands it: shards,
or only the parameters it gathered). That is no record of a task: it holds
the frozen base too, under the original module names, and nothing says
which tensors form which task. This callback writes the task bundles
themselves next to every checkpoint and once more when training ends::

    from adaptlang.bundles.trainer import BundleCallback

    adapted = adaptlang.apply(model, "spec.adapt", task="sentiment")
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[BundleCallback(adapted)])
    trainer.train()
    # out/checkpoint-500/adaptlang/<task>.safetensors, ..., out/adaptlang/<task>.safetensors

Without the callback, one line after training does the same for the end of
the run (on every rank when distributed)::

    trainer.train()
    adapted.save("out/adaptlang")

Distributed runs (``torchrun``): the ``Trainer`` calls its callbacks on every
rank. On a sharded model (FSDP, DeepSpeed ZeRO-3) the callback calls ``adapted.save`` on every
rank, because saving is collective there (each rank holds part of the
values and takes part in gathering them; rank 0 writes). Under DDP every
rank holds the same values: rank 0 writes alone. Either way every rank
waits until the files are written and raises rank 0's error if writing
failed, so no rank goes on, or exits, before the bundles exist. The
one-line alternative must be run on every rank for the same reason (under
DDP, rank 0 alone suffices).

This module imports ``transformers``; nothing in adaptlang imports it at
package import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from transformers import TrainerCallback

from adaptlang.bundles.bundle import check_storage_dtype
from adaptlang.bundles.ranks import on_rank_zero
from adaptlang.errors import Diagnostic, UsageError

__all__ = ["BundleCallback", "unwrap_model"]

BUNDLE_FOLDER = "adaptlang"
"""The folder name the bundles go into, inside a checkpoint or the output folder."""


def unwrap_model(model: Any) -> Any:
    """Returns the user's module inside the wrappers a training engine puts around it.

    DDP, ``DataParallel``, FSDP1's root wrapper and a DeepSpeed engine keep
    the model as ``.module``; ``torch.compile`` keeps it as ``._orig_mod``.
    FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3's partitioning change the
    model in place (its class, its parameters) and keep the same object, so
    there is nothing to unwrap there. Only these wrapper classes are
    unwrapped: a user's model may well have a child named ``module``.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    wrappers: tuple[type, ...] = (DataParallel, DistributedDataParallel)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except ImportError:  # a torch built without distributed support
        pass
    while True:
        if isinstance(model, wrappers) or type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class BundleCallback(TrainerCallback):
    """Writes adaptlang bundles at every ``Trainer`` checkpoint and at the end of training.

    Checkpoint ``N`` gets ``{output_dir}/checkpoint-N/adaptlang/<task>.safetensors``
    (so ``save_total_limit`` rotates them together with the Trainer's own
    files when ``output_dir`` is the Trainer's); the end of training writes
    ``{output_dir}/adaptlang/<task>.safetensors``, which no rotation removes.

    It also refuses a ``use()`` that changed which parameters train after
    the Trainer built its optimizer (:meth:`_check_task`). Pass it to the
    Trainer's constructor (``callbacks=[...]``): a new Trainer then starts
    afresh, even with the same callback object.

    Args:
        adapted: The handle ``adaptlang.apply`` or ``adaptlang.load`` returned
            for the model given to the ``Trainer``. None: found from the
            model the ``Trainer`` trains (``adaptlang.handle``) when training begins.
        output_dir: Where to write (default: the Trainer's ``args.output_dir``).
        tasks: The tasks to save (default: all of them, as ``adapted.save``).
        dtype: Store floating tensors in this dtype (see ``BundleAdapted.save``).

    Attributes:
        saved: The bundle paths written so far by this process, in order.
    """

    def __init__(self, adapted: Any = None, output_dir: str | Path | None = None,
                 tasks: Iterable[str] | None = None, dtype: torch.dtype | None = None):
        check_storage_dtype(dtype, "BundleCallback(dtype=...)")  # refused now, not at the first checkpoint
        self.adapted = adapted
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.tasks = None if tasks is None else list(tasks)
        self.dtype = dtype
        self.saved: list[Path] = []
        # The handle's trainable set (Adapted._trainable_epoch) the Trainer's optimizer was built for;
        # None until a train() begins.
        self._epoch: int | None = None
        self._task: str | None = None

    # ------------------------------------------------------------- events
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A new Trainer: it builds its optimizer (and DDP wrapper) for whichever task is active then."""
        self._epoch = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Finds or checks the handle against the model the Trainer trains, before any step runs.

        Raises:
            UsageError: A handle of another model; or ``use()`` changed which
                parameters train since this Trainer's last ``train()``.
        """
        adapted = self._handle(model)
        if self._epoch is not None:
            self._check_task(adapted)
        self._epoch, self._task = adapted._trainable_epoch, adapted.active_task

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Refuses to go on after ``use()`` changed which parameters train (see :meth:`_check_task`)."""
        self._check_task(self.adapted)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Writes the bundles of checkpoint ``state.global_step``."""
        self._save(self._root(args) / f"checkpoint-{state.global_step}" / BUNDLE_FOLDER, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Writes the final bundles."""
        self._save(self._root(args) / BUNDLE_FOLDER, model)

    # ------------------------------------------------------------ helpers
    def _root(self, args: Any) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir)

    def _handle(self, model: Any) -> Any:
        """Returns the handle, checking that it belongs to the model being trained.

        Why check: a handle of another model (a copy, or a model the Trainer
        was not given) would save values that never trained, without error.
        """
        inner = unwrap_model(model) if model is not None else None
        if self.adapted is None:
            if inner is None:
                raise UsageError(Diagnostic("BundleCallback() without a handle needs the Trainer's model",
                                            obj="BundleCallback", hint="pass BundleCallback(adapted)"))
            from adaptlang.runtime.copying import handle_of

            self.adapted = handle_of(inner)
        elif inner is not None and inner is not self.adapted.model:
            raise UsageError(Diagnostic(
                "BundleCallback's handle belongs to another model than the one the Trainer trains",
                obj="BundleCallback",
                hint="pass the handle adaptlang.apply returned for the model given to Trainer(model=...)",
                notes=(f"trained: {type(inner).__name__} at {id(inner):#x}; "
                       f"handle's: {type(self.adapted.model).__name__} at {id(self.adapted.model):#x}",)))
        return self.adapted

    def _check_task(self, adapted: Any) -> None:
        """Raises when the trainable set differs from the one the Trainer's optimizer was built with.

        Why: the ``Trainer`` builds its optimizer once (and under DDP its
        wrapper, which fixes the parameters it averages); after a ``use()``
        that changes which parameters train, the new task's parameters get
        gradients that no optimizer applies (or that DDP never averages):
        training would run on and change nothing, silently.
        """
        if adapted._trainable_epoch != self._epoch:
            raise UsageError(Diagnostic(
                f"use() switched from task '{self._task}' to '{adapted.active_task}' after this Trainer built its "
                f"optimizer for '{self._task}'", obj="BundleCallback",
                hint="build a new Trainer after use(): its optimizer (and DDP wrapper) then hold the new task's "
                     "parameters",
                notes=("the Trainer creates its optimizer once, from the parameters that required grad then",)))

    def _save(self, folder: Path, model: Any) -> None:
        """Saves the bundles; every rank must get here (the Trainer calls its callbacks on every rank)."""
        adapted = self._handle(model)
        tasks = self.tasks if self.tasks is not None else adapted.tasks
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and not adapted.sharded():
            # DDP: every rank holds the same values, so rank 0 writes alone (not N copies at once), and
            # every rank waits for it and raises its error: none goes on, or exits, before the files exist.
            paths = on_rank_zero(lambda: adapted.save(folder, tasks=tasks, dtype=self.dtype),
                                 [folder / f"{task}.safetensors" for task in tasks])
        else:
            # One process; or a sharded model (FSDP, ZeRO-3), whose save is itself collective: rank 0 writes there too.
            paths = adapted.save(folder, tasks=tasks, dtype=self.dtype)
        self.saved.extend(paths)
