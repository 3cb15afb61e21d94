"""DDP and task switching: a wrapper that knows which trainable set it was built for.

``DistributedDataParallel`` fixes its list of parameters (those with
``requires_grad``) when it is built, and from then on averages the
gradients of exactly those. ``adapted.use(task)`` changes which delta
parameters train; a DDP wrapper built before would then leave the new
task's gradients unaveraged (each rank trains its own copy: no error, a
silently wrong model) or wait for gradients that never come.

:func:`wrap_ddp` builds the wrapper and remembers the handle's trainable
set at that moment (``Adapted._trainable_epoch``); a forward through the
wrapper after a switch that changed the set raises, telling to wrap again.
Wrapping again after ``use()`` is correct: the new wrapper broadcasts rank
0's parameters and registers the new set.

FSDP2 and FSDP1 need no such wrapper: their parameters stay registered
whatever their ``requires_grad`` (see :mod:`adaptlang.runtime.shards` for
what they refuse).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adaptlang.errors import Diagnostic, UsageError

__all__ = ["wrap_ddp"]


class _StaleCheck:
    """A forward pre-hook on a DDP wrapper: refuses it once the handle's trainable set changed.

    A module-level class holding the handle, not a closure: deep copies and
    pickles may carry it along.
    """

    def __init__(self, adapted: Any, task: str, epoch: int):
        self.adapted = adapted
        self.task = task
        self.epoch = epoch

    def __call__(self, module: nn.Module, args: Any, kwargs: Any = None) -> None:
        adapted = self.adapted
        if adapted._trainable_epoch != self.epoch:
            raise UsageError(Diagnostic(
                f"this DistributedDataParallel wrapper was built while task '{self.task}' was active; task "
                f"'{adapted.active_task}' trains other parameters, which the wrapper does not know",
                obj="DistributedDataParallel",
                hint="wrap again after use(): ddp_model = adapted.wrap_ddp(...)",
                notes=("DDP fixes the parameters whose gradients it averages when it is built",)))


def wrap_ddp(adapted: Any, **ddp_kwargs: Any) -> nn.Module:
    """Wraps ``adapted.model`` in ``DistributedDataParallel`` for the active task.

    Args:
        adapted: The :class:`~adaptlang.runtime.adapted.Adapted` handle.
        **ddp_kwargs: Passed to ``DistributedDataParallel`` (``device_ids``...).

    Returns:
        The wrapper; its forward raises :class:`~adaptlang.errors.UsageError`
        once ``use()`` changed which parameters train (wrap again then).

    Raises:
        UsageError: No process group is initialised.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError(Diagnostic("DistributedDataParallel needs a process group",
                                    hint="call torch.distributed.init_process_group(...) first"))
    adapted._check_live()
    wrapper = DistributedDataParallel(adapted.model, **ddp_kwargs)
    wrapper.register_forward_pre_hook(_StaleCheck(adapted, adapted.active_task, adapted._trainable_epoch),
                                      with_kwargs=True)
    return wrapper
