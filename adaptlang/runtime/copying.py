"""Copies of an adapted model: the handle found through the model, and deep copies of it.

What a copy is:

* ``copy.deepcopy(adapted)`` is an independent handle on an independent copy
  of the model: the model, every delta parameter, the tune originals, the
  quantized storage and the undo log are copied through one memo, so the
  copy's ``use``/``merge``/``remove`` act on the copy only, and the original
  keeps working. The plan (immutable) is shared.
* ``copy.deepcopy(model)`` and a whole-model pickle of an adapted model
  (``torch.save(model)``, which the user loads back with torch themselves;
  adaptlang never loads a pickle: unpickling runs code, so only files of
  one's own may be loaded that way, and bundles are what to share) copy its
  handle too, because the root model records it (``model._adaptlang_handle``, a plain
  attribute, not in the state dict); :func:`handle_of` (``adaptlang.handle``,
  ``Adapted.of``) returns the copy's own handle, in the same state (active
  task, merged or not).
* ``copy.copy(adapted)`` is refused: a shallow copy would be a second handle
  on the same model, whose ``remove()`` would leave the first one stale.

What makes this work is that every piece of patch state is data: undo
actions are objects (:mod:`adaptlang.runtime.undo`), hooks are bound
methods of objects in the copy, and state keyed by ``id()`` is recomputed on
unpickling (``TaskConfig.__setstate__``). Unpickling runs no code of ours
beyond restoring those objects' attributes.

Tensors outside the module tree follow ``model.to(...)`` through
:class:`OutsideTensors` (the last section).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

import torch
from torch import nn

from adaptlang.errors import Diagnostic, UsageError
from adaptlang.runtime.undo import Detach

__all__ = [
    "HANDLE_ATTR", "OUTSIDE_ATTR", "OutsideTensors", "attach_handle", "attach_outside", "deepcopy_handle",
    "handle_of", "outside_tensors", "shallow_copy_error",
]

#: Plain attribute of the root model (in ``__dict__``) that holds its handle while it is patched.
HANDLE_ATTR = "_adaptlang_handle"


def attach_handle(adapted: Any) -> None:
    """Records ``adapted`` on its model, so that copies of the model carry their own handle.

    ``remove()`` (or a failed apply) forgets it through the undo log.
    """
    adapted.model.__dict__[HANDLE_ATTR] = adapted
    adapted._patch.tx.on_undo(Detach(adapted.model, "__dict__", HANDLE_ATTR))


def handle_of(model: Any) -> Any:
    """Returns the handle of an adapted model (also of a deep copy or an unpickled copy of one).

    Args:
        model: The root model that ``adaptlang.apply`` patched, or a copy of it.

    Returns:
        Its :class:`~adaptlang.runtime.adapted.Adapted` (a ``BundleAdapted``
        when ``adaptlang.apply``/``load`` built it).

    Raises:
        UsageError: Not a module, or a module that carries no live patch
            (never adapted, removed, or a submodule of an adapted model).
    """
    if not isinstance(model, nn.Module):
        raise UsageError(Diagnostic(f"expected the adapted model (an nn.Module), got {type(model).__name__}",
                                    obj=type(model).__name__))
    adapted = model.__dict__.get(HANDLE_ATTR)
    if adapted is None:
        raise UsageError(Diagnostic(
            f"this {type(model).__name__} carries no adaptlang patches", obj=type(model).__name__,
            hint="pass the root model that adaptlang.apply patched (or a copy of it), not a submodule; "
                 "a model whose handle was removed is plain again"))
    return adapted


def deepcopy_handle(adapted: Any, memo: dict[int, Any]) -> Any:
    """``Adapted.__deepcopy__``: copies the handle, its model and its patch through ``memo``.

    The plan is immutable and shared. The new handle enters ``memo`` before
    anything else is copied, so the copied model's handle attribute (and any
    other path back to the handle) lands on it.
    """
    cls = type(adapted)
    new = cls.__new__(cls)
    memo[id(adapted)] = new
    memo.setdefault(id(adapted.plan), adapted.plan)
    for key, value in adapted.__dict__.items():
        new.__dict__[key] = copy.deepcopy(value, memo)
    # A call with tasks=[...] on another thread may have had its rows' tune copies in the parameter slots
    # while the model was copied: put the active task's back, in the copy (its truth is the task config).
    config = new._patch.configs.get(new._active) if new._active is not None else None
    if config is not None:
        new._patch.tune.reset(config.tune)
    return new


def shallow_copy_error(adapted: Any) -> UsageError:
    """Returns the error ``Adapted.__copy__`` raises: a shallow copy would share the model."""
    return UsageError(Diagnostic(
        f"copy.copy() of an adapted {type(adapted.model).__name__} would be a second handle on the same model",
        obj=type(adapted).__name__,
        hint="copy.deepcopy(adapted) copies the model too; or keep using the one handle"))


# ------------------------------------------------------------ .to() outside the tree
# Carrying ``model.to(...)`` to the tensors a patch keeps outside the module tree.
#
# Two kinds of tensors belong to an adapted model without being in its module
# tree at every moment:
#
# * ``tune`` slots: the slot holds one parameter (the active task's copy, or
#   the original); the original and the other deltas' copies wait outside;
# * quantized sites applied with ``keep_base=True``: the original weight waits
#   outside while the quantized storage stands in for it.
#
# ``model.to(torch.float64)``, ``.half()``, ``.cuda()`` only reach tensors in
# the tree, so a later task switch (or ``remove()``) would put a tensor of the
# old dtype or device back into a converted model. :class:`OutsideTensors`,
# registered on the root model as ``adaptlang_outside`` when a patch has such
# tensors, is reached by every ``_apply`` and converts them in place, exactly
# as ``nn.Module._apply`` converts parameters (same objects; their gradients
# too). It holds no parameters or buffers: state dicts do not change.

#: Child of the root model that carries conversions to the tensors outside the tree.
OUTSIDE_ATTR = "adaptlang_outside"


def outside_tensors(patch: Any) -> Iterator[torch.Tensor]:
    """Yields every tensor of ``patch`` that is not in the module tree now (each once).

    Args:
        patch: The :class:`~adaptlang.runtime.transaction.Patch`.
    """
    seen: set[int] = set()
    tune = patch.tune
    for key, original in tune.originals.items():
        in_slot = tune.modules[key]._parameters.get(key[1])
        for tensor in [original, *(copies[key] for copies in tune.copies.values() if key in copies)]:
            if tensor is not in_slot and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor
    for path in patch.quantized:
        snap = patch.site_snapshots[path]
        for table, name, tensor in snap.taken_out():
            # A released original is empty until remove() fills it with values of the right dtype.
            if (table, name) not in snap.released and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor


def has_outside_tensors(patch: Any) -> bool:
    """True when ``patch`` keeps tensors outside the module tree (see the module docstring)."""
    return next(outside_tensors(patch), None) is not None


class OutsideTensors(nn.Module):
    """A parameterless child of the root model whose ``_apply`` converts a patch's outside tensors.

    Args:
        patch: The :class:`~adaptlang.runtime.transaction.Patch`.
    """

    def __init__(self, patch: Any):
        super().__init__()
        # A plain attribute (not a submodule): the patch is not part of the tree.
        self.__dict__["patch"] = patch

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "OutsideTensors":
        with torch.no_grad():
            for tensor in list(outside_tensors(self.patch)):
                _convert(tensor, fn)
                if tensor.grad is not None:
                    _convert(tensor.grad, fn)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Never called: this module only carries conversions."""
        raise NotImplementedError("adaptlang_outside is not a layer")


def _convert(tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Converts ``tensor`` in place, keeping the object (its holders are the patch's tables).

    ``.data =`` where the types allow it, as ``nn.Module._apply`` does; a
    meta tensor becoming a real one (``model.to_empty(device=...)`` after a
    meta-device ``apply``) does not allow it, and ``nn.Module`` would make a
    new object there: the contents are swapped into the same object instead.
    """
    converted = fn(tensor)
    if torch._has_compatible_shallow_copy_type(tensor, converted):
        tensor.data = converted
        return
    if isinstance(tensor, nn.Parameter):
        converted = nn.Parameter(converted, requires_grad=tensor.requires_grad)
    torch.utils.swap_tensors(tensor, converted)


def attach_outside(patch: Any) -> bool:
    """Registers :class:`OutsideTensors` on the patched model when it has outside tensors.

    Returns:
        True when it was registered (the caller registers the undo).
    """
    if not has_outside_tensors(patch):
        return False
    patch.model._modules[OUTSIDE_ATTR] = OutsideTensors(patch)
    return True
