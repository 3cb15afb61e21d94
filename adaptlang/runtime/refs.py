"""Where each delta parameter lives: references resolved through the module tree at each use.

Distributed engines replace parameter objects. FSDP2's ``fully_shard`` puts
sharded ``DTensor`` parameters in every slot, and plain unsharded ones during
a layer's forward; FSDP1 (``use_orig_params=True``) re-points them at 1-D
views of a flat shard; ``.to()`` on a module may assign new ones. An object
kept from ``apply`` time would be the stale one: gradients, ``requires_grad``
flags and saved values would all go to a tensor nothing uses any more.

So adaptlang keeps no delta parameter object across calls. It keeps *where*
each one is: a :class:`SlotRef` (the module that owns the slot, and the
slot's name) for parts and prompts; a :class:`TuneRef` for a ``tune`` delta's
copy, which sits in the base module's own slot only while a task using it is
active (:mod:`adaptlang.runtime.tune`). ``ref.get()`` reads the slot now.
Module objects are kept by every engine here (FSDP2 changes their class in
place; FSDP1 wraps them but keeps them in its tree; DDP leaves them alone;
DeepSpeed ZeRO-3 keeps modules and parameter objects alike, and swaps each
parameter's ``data`` between an empty placeholder and the full value).

What still holds tensors across calls, and why that is safe:

* :class:`~adaptlang.runtime.fused.FactorCache` keeps concatenated *copies*
  of stacked factors for inference, keyed on the live factors' version and
  storage, so a swapped or re-sharded factor remakes them;
* :class:`~adaptlang.runtime.tune.TuneSlots` keeps the objects that are *not*
  in a slot now (the originals and the inactive copies): nothing else holds
  them, so no engine can have replaced them; the one in the slot is read
  from the slot (and taken back from it on a switch);
* merge records keep the originals of merged base tensors (merging is refused
  on a sharded model: :mod:`adaptlang.runtime.shards`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError

__all__ = ["SlotRef", "TuneRef", "refs_of"]


class SlotRef:
    """A parameter slot: ``module._parameters[name]``, read when needed.

    Attributes:
        module: The module that owns the slot (a delta part, a prompt part).
        name: The slot's name in ``module._parameters``.
        shape: The parameter's full (unsharded) shape when the delta was made.
    """

    __slots__ = ("module", "name", "shape")

    def __init__(self, module: nn.Module, name: str, shape: tuple[int, ...]):
        self.module = module
        self.name = name
        self.shape = shape

    def get(self) -> torch.Tensor:
        """Returns the parameter the slot holds now.

        Raises:
            RuntimeApplyError: The slot was emptied (something deleted the parameter).
        """
        param = self.module._parameters.get(self.name)
        if param is None:
            raise RuntimeApplyError(Diagnostic(
                f"the delta parameter '{self.name}' of a {type(self.module).__name__} is gone", obj=self.name))
        return param

    def __repr__(self) -> str:
        return f"SlotRef({type(self.module).__name__}.{self.name}, shape={self.shape})"


class TuneRef:
    """A ``tune`` delta's copy of one base parameter slot (:meth:`TuneSlots.live`).

    Attributes:
        slots: The model's :class:`~adaptlang.runtime.tune.TuneSlots`.
        delta: The tune delta.
        key: The slot, ``(module path, parameter name)``.
        shape: The parameter's full shape.
    """

    __slots__ = ("slots", "delta", "key", "shape")

    def __init__(self, slots: Any, delta: str, key: tuple[str, str], shape: tuple[int, ...]):
        self.slots = slots
        self.delta = delta
        self.key = key
        self.shape = shape

    def get(self) -> torch.Tensor:
        """Returns the copy: the slot's parameter while the delta is active there, else the kept one."""
        return self.slots.live(self.delta, self.key)

    def __repr__(self) -> str:
        return f"TuneRef({self.delta}, {self.key[0]}.{self.key[1]}, shape={self.shape})"


def refs_of(part: nn.Module, names: list[str]) -> dict[str, SlotRef]:
    """Returns a :class:`SlotRef` for each local parameter name of a part (``lora_A``, ``down.weight``...).

    Raises:
        RuntimeApplyError: A name the part does not have.
    """
    refs: dict[str, SlotRef] = {}
    for local in names:
        prefix, _, leaf = local.rpartition(".")
        try:
            owner = part.get_submodule(prefix)
        except AttributeError:
            owner = None
        param = None if owner is None else owner._parameters.get(leaf)
        if param is None:
            raise RuntimeApplyError(f"{type(part).__name__} has no parameter '{local}'")
        refs[local] = SlotRef(owner, leaf, tuple(param.shape))
    return refs
