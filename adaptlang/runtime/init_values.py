"""Initial delta values after a meta-device ``apply``: what :meth:`Adapted.init_deltas` does.

The large-model recipe (README, "Training on several devices")::

    with torch.device("meta"):
        model = build(config)                   # no memory, no values
    adapted = adaptlang.apply(model, spec)      # delta parts created on meta too
    fully_shard(...)                            # FSDP2: each layer, then the root
    model.to_empty(device=device)               # storage for this rank's shards, not initialised
    set_model_state_dict(model, checkpoint)     # the base weights
    adapted.init_deltas()                       # the delta values: this module

Every value written equals what ``apply`` gives the same spec on the real
model with the same ``seed``, bit for bit, on every rank and whatever the
world size. How: for each (delta, site) the *full* initial value is made on
CPU by the builder ``apply`` itself uses, from the same generator
(``derive_generator(seed, delta, path)``, one per site); each rank then
copies its own shard of it (``distribute_tensor(full, mesh, placements,
src_data_rank=None)``: no communication, every rank cuts its own copy, and
the copy is the same everywhere). Formulas live in the builders only.

Kinds that read base values gather them (``full_tensor()``: a collective,
so **every rank must call** ``init_deltas``, after loading the base weights):

* DoRA's magnitude: the row norms of the base weight (dequantized on a quantized site);
* prompts with ``init vocab`` or ``init text``: rows of the input embedding
  (a plain ``nn.Embedding``; ``text`` needs the tokenizer again);
* ``tune``: a copy of the base parameter as loaded.

``tune`` on a meta-applied model: the task active at ``apply`` has its copy
in the parameter slot, so loading the checkpoint wrote the base values into
the copy, not into the original kept outside the module tree (``to_empty``
left that one unset). While ``Patch.values_pending`` (apply met meta
tensors) the value in the slot is therefore the base value: the originals
and the other copies outside the tree are filled from it first. Afterwards
the original is the source, wherever it is.

Sparse deltas are refused on the meta device at ``apply`` (their positions
come from the base values); on a model applied with real values their
``values`` go back to zero and the positions stay.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.adapter import build_adapter_part
from adaptlang.runtime.binding import derive_generator, resolve_module
from adaptlang.runtime.ia3 import build_ia3_part
from adaptlang.runtime.layers import describe_layer, out_in_view
from adaptlang.runtime.lora import build_lora_part
from adaptlang.runtime.prompt_parts import PromptPart, check_plain_embedding, init_prompt, missing_tokenizer
from adaptlang.runtime.shards import FSDP2, sharding_engine
from adaptlang.runtime.sparse import SparsePart
from adaptlang.runtime.tune import split_param_path

__all__ = ["init_deltas"]

_HINT = "call it on every rank after model.to_empty(device=...) and loading the base weights"


def init_deltas(patch: Any, plan_dict: dict[str, Any], tokenizer: Any = None) -> dict[str, int]:
    """Writes every delta parameter's initial value (module docstring).

    Collective on a model sharded by FSDP2 whenever a delta reads base values
    (DoRA, prompts from vocab/text, tune): every rank must call it, with the
    model in the same state. Everything that can refuse is checked before the
    first collective, so a refusal is raised on every rank alike.

    Args:
        patch: The handle's :class:`~adaptlang.runtime.transaction.Patch`.
        plan_dict: The bound plan (``Plan.to_dict()``).
        tokenizer: For prompts initialised from text (as given to ``apply``).

    Returns:
        Delta -> the number of values written for it (full sizes, not this rank's share).

    Raises:
        RuntimeApplyError: A tensor still on the meta device, one sharded by
            FSDP1 or ZeRO-3, a text prompt without a tokenizer, a prompt on an
            embedding that is not a plain ``nn.Embedding``, or DoRA on
            quantized storage that FSDP2 sharded.
    """
    reshard(patch.model)
    _check(patch, plan_dict, tokenizer)
    counts: dict[str, int] = {}
    with torch.no_grad():
        if patch.values_pending:
            _fill_tune_outside(patch)
        for delta, info in plan_dict["deltas"].items():
            counts[delta] = 0
            refs = patch.delta_params[delta]
            for site in info["sites"]:
                values = _initial_values(patch, delta, info["kind"], site, tokenizer)
                for local, full in values.items():
                    key = f"{site['path']}/{local}"
                    write_full(refs[key].get(), full, f"{delta}/{key}")
                    counts[delta] += full.numel()
    patch.values_pending = False
    return counts


def reshard(model: Any) -> None:
    """Puts FSDP2's sharded parameters back in their slots (a local step, no communication).

    Why: after a forward without gradients FSDP2 leaves the root module's
    parameters unsharded (plain tensors it frees at the next reshard): a value
    written there would be lost, and the shards would keep the old one.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch built without distributed
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# ------------------------------------------------------------------ checks
def _check(patch: Any, plan_dict: dict[str, Any], tokenizer: Any) -> None:
    """Refuses what cannot be initialised, before any collective (module docstring)."""
    tune = patch.tune
    for key, original in tune.originals.items():  # outside the tree: to_empty() must have reached them too
        name = f"{key[0]}.{key[1]}"
        for tensor in [original, *(copies[key] for copies in tune.copies.values() if key in copies)]:
            _check_tensor(tensor, name, name)
    for delta, info in plan_dict["deltas"].items():
        for key, ref in patch.delta_params[delta].items():
            _check_tensor(ref.get(), f"{delta}/{key}", delta)
        for site in info["sites"]:
            for name, tensor in _base_reads(patch, delta, info["kind"], site):
                _check_tensor(tensor, name, delta)
            if info["kind"] == "prompt" and site.get("init", "random") != "random":
                if site.get("init") == "text" and tokenizer is None:
                    raise RuntimeApplyError(missing_tokenizer(delta, "adapted.init_deltas(tokenizer=tok)"))
                check_plain_embedding(resolve_module(patch.model, site["path"], unwrap=True), delta)


def _base_reads(patch: Any, delta: str, kind: str, site: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """The base tensors a site's initial values read: ``(name, tensor)`` pairs.

    Raises:
        RuntimeApplyError: DoRA on quantized storage that FSDP2 sharded (dequantizing needs all of it).
    """
    path = site["path"]
    if kind == "lora" and site.get("variant") == "dora":
        quant = patch.sites[path].quant
        if quant is None:
            return [(f"{path}.weight", _base_tensor(patch, path, "weight"))]
        storage = [(f"{path}.quant.{name}", t) for name, t in quant._parameters.items() if t is not None]
        if any(sharding_engine(t) is not None for _, t in storage):
            raise RuntimeApplyError(Diagnostic(
                f"DoRA '{delta}' at '{path}' starts its magnitude from the dequantized weight, and this site's "
                "quantized storage is sharded", obj=delta,
                hint="call init_deltas() before sharding, or use plain LoRA on quantized sites"))
        return storage
    if kind == "prompt" and site.get("init", "random") != "random":
        return [(f"{path}.weight", _base_tensor(patch, path, "weight"))]
    if kind == "tune":
        return [(f"{path}.{site['param']}", _base_tensor(patch, path, site["param"]))]
    return []


def _check_tensor(tensor: torch.Tensor, name: str, delta: str) -> None:
    """Refuses a tensor this module cannot read or write: on meta, or sharded by FSDP1 or ZeRO-3."""
    engine = sharding_engine(tensor)
    if engine is not None and engine != FSDP2:
        raise RuntimeApplyError(Diagnostic(
            f"init_deltas: '{name}' is sharded by {engine}, whose shards init_deltas cannot address",
            obj=delta, hint="call init_deltas() before wrapping the model (after loading its weights), or "
                            "shard with FSDP2 (fully_shard)"))
    local = tensor.to_local() if engine == FSDP2 else tensor
    if local.is_meta:
        raise RuntimeApplyError(Diagnostic(
            f"init_deltas: '{name}' is still on the meta device", obj=delta, hint=_HINT))


# ------------------------------------------------------------------ values
def _initial_values(patch: Any, delta: str, kind: str, site: dict[str, Any],
                    tokenizer: Any) -> dict[str, torch.Tensor]:
    """Returns a site's full initial values on CPU, by local name, made as ``apply`` makes them."""
    path = site["path"]
    gen = derive_generator(patch.seed, delta, path)  # as transaction._add_deltas
    if kind == "tune":
        return {site["param"]: full_value(_base_tensor(patch, path, site["param"]))}
    if kind == "prompt":
        embed = resolve_module(patch.model, path, unwrap=True)
        part = PromptPart(int(site["tokens"]), embed.weight.shape[1], device="cpu")
        weight = None if site.get("init", "random") == "random" else full_value(_base_tensor(patch, path, "weight"))
        init_prompt(part, site, embed, gen, tokenizer, delta, weight=weight)
        return _detached(part.adapter_params())
    site_module = patch.sites[path]
    base = site_module._modules["base"]
    if kind == "lora":
        weight_oi = None
        if site.get("variant") == "dora":
            quant = site_module.quant
            # As SiteModule.add_part: a quantized site's magnitude starts from the dequantized weight.
            dense = (quant.dequantize(torch.float32) if quant is not None
                     else _base_tensor(patch, path, "weight"))
            weight_oi = out_in_view(describe_layer(base).kind, full_value(dense))
        return _detached(build_lora_part(base, site, gen, weight_oi=weight_oi, device="cpu").adapter_params())
    if kind == "ia3":
        return _detached(build_ia3_part(base, site, device="cpu").adapter_params())
    if kind == "adapter":
        return _detached(build_adapter_part(base, site, gen, device="cpu").adapter_params())
    if kind == "sparse":
        part = site_module._modules["parts"][delta]
        fresh = SparsePart(part.param, part.shape, part.indices.detach().cpu(), dtype=part.values.dtype)
        return _detached(fresh.adapter_params())
    raise RuntimeApplyError(f"init_deltas: unknown delta kind '{kind}'")


def _detached(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in params.items()}


def _base_tensor(patch: Any, path: str, name: str) -> torch.Tensor:
    """The original (untrained) base tensor at ``path.name``, as the model holds it now.

    A slot a ``tune`` delta holds has its original outside the module tree.
    """
    key = (path, name)
    tune = patch.tune
    if key in tune.originals and tune.holder[key] is not None:
        return tune.originals[key]
    return resolve_module(patch.model, path, unwrap=True)._parameters[name]


def _fill_tune_outside(patch: Any) -> None:
    """After loading a meta-applied model: every tune tensor outside the tree gets its slot's loaded value.

    Loading wrote the base values into whatever sat in each slot (for a tied
    tensor: into the slot of the name the checkpoint kept); the originals and
    copies kept outside the tree were left unset by ``to_empty``.
    Slots in insertion order, the same on every rank (``full_tensor`` is collective).
    """
    tune = patch.tune
    ties = patch.base_ties or {}
    for key, module in tune.modules.items():
        in_slot = source = module._parameters[key[1]]
        # A tensor tied to other names (lm_head.weight and the embedding) is saved once, under one of them
        # (save_pretrained drops the duplicate; strict=False loading says nothing): take the value from a
        # tied name that no tune delta occupies, which holds the original and was loaded.
        for other in ties.get(id(tune.originals[key]), ()):
            slot = split_param_path(other)
            if slot != key and slot not in tune.modules:
                source = resolve_module(patch.model, slot[0], unwrap=True)._parameters[slot[1]]
                break
        loaded = full_value(source)
        holder = tune.holder[key]
        outside = [] if holder is None else [tune.originals[key]]
        if source is not in_slot and holder is not None:
            outside.append(in_slot)  # the copy in the slot was not loaded either: its name was not saved
        outside += [copies[key] for delta, copies in tune.copies.items() if key in copies and delta != holder]
        for tensor in outside:
            write_full(tensor, loaded, f"{key[0]}.{key[1]}")


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """Returns the full value of a (possibly FSDP2-sharded) tensor on CPU, detached.

    Collective for a ``DTensor`` (``full_tensor()``). May share storage with
    an unsharded CPU tensor: read it, do not write it.
    """
    if sharding_engine(tensor) == FSDP2:
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu")


def write_full(target: torch.Tensor, full: torch.Tensor, name: str) -> None:
    """Copies the full value ``full`` into ``target``: this rank's shard of it, or all of it.

    Args:
        target: The live tensor: an FSDP2 ``DTensor`` (sharded parameter) or a plain one.
        full: Its full value (the global shape), any device and dtype.
        name: For errors.

    Raises:
        RuntimeApplyError: The shapes differ.
    """
    if tuple(full.shape) != tuple(target.shape):  # a DTensor's shape is the global one
        raise RuntimeApplyError(Diagnostic(
            f"'{name}' has shape {tuple(target.shape)}, the value to write {tuple(full.shape)}",
            obj=name))
    full = full.to(dtype=target.dtype)
    if sharding_engine(target) == FSDP2:
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: no broadcast; every rank holds the same full value and keeps its own shard.
        mine = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
        target.to_local().copy_(mine.to_local())
    else:
        target.copy_(full.to(target.device))
