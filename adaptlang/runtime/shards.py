"""Sharded parameters: telling which engine holds a tensor, and gathering full values.

Three kinds of sharded parameter reach adaptlang:

* **FSDP2** (``torch.distributed.fsdp.fully_shard``): a ``DTensor``; its
  full value is ``full_tensor()``, a collective every rank must join;
* **FSDP1** with ``use_orig_params=True`` (what accelerate and the HF
  ``Trainer`` use): the original ``Parameter`` object, re-pointed at a
  1-D view of this rank's part of a flat parameter (``_fsdp_flattened``).
  Rank ``i`` holds the slice ``[start_i, end_i)`` of the flattened
  parameter, ranks in order and contiguous (``FlatParamHandle``: the flat
  parameter is cut into equal consecutive chunks), so the full value is the
  concatenation of every rank's slice, reshaped. Inside
  ``summon_full_params`` each rank holds all of it instead;
* **DeepSpeed ZeRO-3**: the original ``Parameter`` object, marked with
  ``ds_id`` (its full shape is ``ds_shape``); outside a forward its
  ``data`` is an empty placeholder and this rank's partition lies in
  ``ds_tensor``. ``deepspeed.zero.GatheredParameters`` makes the full value
  the parameter's ``data`` on every rank until the context exits (a
  collective).

:func:`gather_full` returns full CPU copies of a set of tensors; it is
collective when any of them is sharded (every rank must call it with the
same keys, in the same order), and checks every result's shape against the
shape the delta was made with, so a gather that cannot give the full value
is an error, never a wrong file.

Values are only ever *read* this way. Writing into a ZeRO-3 parameter is
refused (:func:`refuse_zero3_writes`): ZeRO-3's optimizer keeps its own
full-precision copy of each partition and writes it back into the
parameters at every step, so values copied into them after
``deepspeed.initialize`` would be lost without a word.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from adaptlang.errors import Diagnostic, RuntimeApplyError, UsageError

__all__ = [
    "FSDP1", "FSDP2", "ZERO3", "check_not_wrapped", "gather_full", "refuse_fsdp1_call", "model_engine", "same_on_every_rank",
    "sharding_engine", "refuse_if_sharded", "refuse_zero3_writes",
]

FSDP2 = "FSDP2 (fully_shard)"
FSDP1 = "FSDP1 (FullyShardedDataParallel)"
ZERO3 = "DeepSpeed ZeRO-3"


def sharding_engine(tensor: Any) -> str | None:
    """Returns which engine shards ``tensor`` (``FSDP2``, ``FSDP1``, ``ZERO3``), or None."""
    if getattr(tensor, "_fsdp_flattened", False):
        return FSDP1
    if hasattr(tensor, "ds_id"):
        return ZERO3
    if _is_dtensor(tensor):
        return FSDP2
    return None


def model_engine(model: Any) -> str | None:
    """Returns the engine that shards any part of ``model``, or None.

    Looks at the modules as well as the parameters: FSDP2 leaves the root's
    parameters unsharded (plain tensors) after a forward without gradients,
    and FSDP1 wraps submodules, so a parameter alone may not show it. The
    answer is the same on every rank.
    """
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover - a torch built without distributed
        FSDPModule = FullyShardedDataParallel = ()  # type: ignore[assignment,misc]
    for module in model.modules():
        if isinstance(module, FSDPModule):
            return FSDP2
        if isinstance(module, FullyShardedDataParallel):
            return FSDP1
    for tensor in model.parameters():
        engine = sharding_engine(tensor)
        if engine is not None:
            return engine
    return None


def _is_dtensor(tensor: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def same_on_every_rank(value: Any, message: str, hint: str = "") -> None:
    """Raises on every rank unless every rank passed an equal ``value`` (one collective).

    Why: collective gathers take each tensor by its place in a list; ranks that
    asked for different tasks would join one task's shards with another's
    (same shapes) into one wrong value, without an error.

    Args:
        value: What must agree (picklable, compared with ``==``).
        message: The error's message.
        hint: What to do instead.

    Raises:
        UsageError: On every rank, with each rank's value.
    """
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    if any(other != everyone[0] for other in everyone):
        raise UsageError(Diagnostic(message, hint=hint or None, notes=tuple(
            f"rank {rank}: {repr(other)[:200]}" for rank, other in enumerate(everyone[:8]))))


def refuse_if_sharded(model_or_tensors: Any, what: str, hint: str) -> None:
    """Raises a clear error when a model (:func:`model_engine`) or any of some tensors is sharded.

    Args:
        model_or_tensors: An ``nn.Module``, or tensors to look at (an iterable).
        what: What cannot be done (``"merge()"``), for the message.
        hint: What to do instead.

    Raises:
        RuntimeApplyError: Naming the engine.
    """
    if hasattr(model_or_tensors, "modules"):
        engines = [model_engine(model_or_tensors)]
    else:
        engines = (sharding_engine(t) for t in model_or_tensors)
    for engine in engines:
        if engine is not None:
            raise RuntimeApplyError(Diagnostic(
                f"{what} is not supported on a model sharded by {engine}: its parameters are shards, and the "
                "engine owns them", hint=hint))


def check_not_wrapped(model: Any) -> None:
    """Refuses a model an engine already sharded or wrapped (``apply`` comes first).

    Why: deltas added afterwards would be plain tensors the engine does not
    know: replicated on every rank, their gradients never averaged (each rank
    would train its own copy, without an error).

    Raises:
        RuntimeApplyError: A sharded parameter, or a DDP wrapper, naming the engine.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        raise RuntimeApplyError(Diagnostic(
            "this model is wrapped in DistributedDataParallel, which fixed its parameters when it was built",
            obj=type(model).__name__, hint="apply to the model first, then wrap it: adapted.wrap_ddp()"))
    engine = model_engine(model)
    if engine is not None:
        raise RuntimeApplyError(Diagnostic(
            f"this model is already sharded by {engine}; deltas added now would not be sharded, nor their "
            "gradients averaged across ranks", obj=type(model).__name__,
            hint="apply first, then shard (on the meta device for a large model: see the README, "
                 "'Training on several devices')"))


def refuse_zero3_writes(tensors: Any, what: str) -> None:
    """Raises a clear error when any of ``tensors`` is a DeepSpeed ZeRO-3 parameter (values go in before the engine).

    Why: outside a forward a ZeRO-3 parameter holds no values (an empty
    placeholder; its shape is not the full one), and its optimizer keeps a
    full-precision copy of every partition that the next step writes back,
    so values copied in after ``deepspeed.initialize`` would not last.

    Args:
        tensors: The tensors about to be written.
        what: What would write them (``"load_adapter_state_dict()"``), for the message.

    Raises:
        RuntimeApplyError: Naming ZeRO-3, with what to do instead.
    """
    refuse_if_sharded([t for t in tensors if sharding_engine(t) == ZERO3], what,
                      "load the values before deepspeed.initialize(): adaptlang.load(model, bundle), or "
                      "load_adapter_state_dict() on the unsharded model, then build the engine (ZeRO-3 "
                      "partitions the values the model holds then)")


def refuse_fsdp1_call(model: Any) -> None:
    """Refuses calling an FSDP1-wrapped model through its adaptlang handle (``adapted(...)``, ``generate``).

    Why: the handle holds the inner model; FSDP1 gathers the full weights only
    when its wrapper is called, so the inner model sees 1-D shards. Cheap (the
    first parameter only: every parameter of an FSDP1-wrapped model is marked),
    since it runs on every call.

    Raises:
        UsageError: The first parameter is an FSDP1 shard.
    """
    first = next(iter(model.parameters()), None)
    if first is not None and getattr(first, "_fsdp_flattened", False):
        raise UsageError(Diagnostic(
            "this model is wrapped by FSDP1: calling it through its adaptlang handle skips the wrapper, which "
            "gathers the weights", hint="call the FullyShardedDataParallel wrapper (per-row tasks and "
                                        "generate through the handle need an unwrapped or FSDP2 model)"))


def gather_full(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Returns a full, detached CPU copy of every tensor (module docstring).

    Collective when any tensor is sharded (FSDP1, FSDP2, ZeRO-3): every rank
    must call it with the same keys in the same order (the sharding is the
    same on every rank, so every rank takes the same path). ZeRO-3
    parameters are gathered together, in one ``GatheredParameters`` context.

    Args:
        tensors: Name -> the tensor as the model holds it now.
        shapes: Name -> its full shape.

    Returns:
        Name -> a new CPU tensor of that shape (never sharing the model's storage:
        FSDP1 must be able to resize its own after ``summon_full_params``).

    Raises:
        RuntimeApplyError: A ZeRO-3 parameter without ``deepspeed`` to import,
            a sharded tensor outside a process group, or a gathered value
            whose size is not the full shape's.
        UsageError: The ranks asked for different tensors (:func:`same_on_every_rank`).
    """
    engines = {name: sharding_engine(t) for name, t in tensors.items()}
    flat_names = [n for n, e in engines.items() if e == FSDP1]
    zero3_names = [n for n, e in engines.items() if e == ZERO3]
    if any(engines.values()) and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeApplyError(Diagnostic(
            "the delta parameters are sharded but no process group is running",
            hint="save from every rank, before destroy_process_group()"))
    if any(engines.values()):
        same_on_every_rank(list(tensors), "the ranks asked for different delta values to gather; on a sharded "
                           "model every rank must ask for the same tasks",
                           "name the task on every rank (the active task may differ between ranks)")
    pieces = _gather_flat_pieces([tensors[n] for n in flat_names]) if flat_names else []
    flat = dict(zip(flat_names, pieces))
    zero3 = _gather_zero3({n: tensors[n] for n in zero3_names}, shapes) if zero3_names else {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        shape = tuple(shapes[name])
        if engines[name] == FSDP2:
            full = tensor.full_tensor().detach().to("cpu", copy=True)
        elif engines[name] == FSDP1:
            full = _join_flat(flat[name], shape, name)
        elif engines[name] == ZERO3:
            full = zero3[name]
        else:
            full = tensor.detach().to("cpu", copy=True)
        if tuple(full.shape) != shape:
            raise RuntimeApplyError(Diagnostic(
                f"gathering '{name}' gave shape {tuple(full.shape)}, not its full shape {shape}", obj=name,
                hint="save outside any engine context that reshapes parameters"))
        out[name] = full.contiguous()
    return out


def _gather_zero3(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Full CPU copies of ZeRO-3 parameters, gathered in one ``GatheredParameters`` context (a collective).

    ``modifier_rank=None``: the values are only read, so nothing is written
    back when the context exits. A parameter that is already whole (inside
    the caller's own ``GatheredParameters``) is copied as it is: gathering it
    again would raise (DeepSpeed refuses overlapping contexts), and our
    context's exit would partition it under the caller's feet.
    """
    try:
        import deepspeed
    except ImportError as exc:
        raise RuntimeApplyError(Diagnostic(
            f"the delta parameters are sharded by {ZERO3}, but deepspeed cannot be imported here to gather them: "
            f"{exc}", hint="save in the process that trains the model, with the same deepspeed installed")) from exc
    for name, tensor in tensors.items():
        full_shape = tuple(getattr(tensor, "ds_shape", ()))
        if full_shape != tuple(shapes[name]):
            raise RuntimeApplyError(Diagnostic(
                f"'{name}' has the full shape {full_shape} under {ZERO3} (ds_shape), not {tuple(shapes[name])}, "
                "the shape it was made with", obj=name))
    whole = [t for t in tensors.values() if getattr(getattr(t, "ds_status", None), "name", None) == "AVAILABLE"]
    whole_ids = {id(t) for t in whole}
    # One list, in the same order on every rank (DeepSpeed also sorts it by ds_id and drops repeats).
    partitioned = [t for t in tensors.values() if id(t) not in whole_ids]
    out: dict[str, torch.Tensor] = {}
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        for name, tensor in tensors.items():
            out[name] = tensor.detach().to("cpu", copy=True)
    return out


def _gather_flat_pieces(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Every rank's local piece of each FSDP1 parameter: ``pieces[i][rank]`` (one collective)."""
    local = [t.detach().reshape(-1).to("cpu", copy=True) for t in tensors]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return [[everyone[rank][i] for rank in range(len(everyone))] for i in range(len(tensors))]


def _join_flat(pieces: list[torch.Tensor], shape: tuple[int, ...], name: str) -> torch.Tensor:
    """The full FSDP1 parameter from every rank's piece (each rank's slice, or each a full copy)."""
    numel = 1
    for size in shape:
        numel *= size
    if all(p.numel() == numel for p in pieces):  # inside summon_full_params: every rank holds it all
        return pieces[0].reshape(shape)
    if sum(p.numel() for p in pieces) != numel:
        raise RuntimeApplyError(Diagnostic(
            f"the ranks' pieces of '{name}' hold {[p.numel() for p in pieces]} values, not {numel} in all",
            obj=name))
    return torch.cat(pieces).reshape(shape)
