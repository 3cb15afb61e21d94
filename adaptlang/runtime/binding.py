"""Binding a plan to a real model: getting the plan, checking it fits, finding modules.

A plan names modules by their dotted path in the *original* model. Once some
of them are wrapped in :class:`~adaptlang.runtime.site.SiteModule`, the same
path has to be followed through each wrapper's ``base``; the helpers here do
that so every other runtime file can keep using plan paths. The snapshots
record what a module looked like before we touched it, so that it can be
restored exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError

__all__ = [
    "FlagSnapshot",
    "ModuleSnapshot",
    "bind_plan",
    "derive_generator",
    "find_fingerprint_differences",
    "resolve_module",
    "resolve_slot",
    "snapshot_flags",
    "split_path",
    "unwrap_sites",
]


def unwrap_sites(module: nn.Module) -> nn.Module:
    """Returns the original module under any number of site wrappers.

    Args:
        module: A module, possibly a ``SiteModule``.

    Returns:
        The innermost ``base`` (``module`` itself when it is not wrapped).
    """
    from adaptlang.runtime.site import SiteModule

    while isinstance(module, SiteModule):
        module = module.base
    return module


def split_path(path: str) -> tuple[str, str]:
    """Splits ``"a.b.c"`` into ``("a.b", "c")`` (the parent path may be empty)."""
    parent, _, name = path.rpartition(".")
    return parent, name


def resolve_module(root: nn.Module, path: str, *, unwrap: bool = False) -> nn.Module:
    """Finds the module a plan path names, looking through site wrappers.

    Args:
        root: The model.
        path: A dotted path of the original model (``""`` is the root).
        unwrap: Return the original module even when the path is wrapped.

    Returns:
        The module now in that slot (a ``SiteModule`` if wrapped, unless
        ``unwrap``).

    Raises:
        RuntimeApplyError: When a segment does not exist.
    """
    module = root
    for segment in path.split(".") if path else ():
        # Plan paths know nothing of wrappers: step through them first.
        module = unwrap_sites(module)
        child = module._modules.get(segment)
        if child is None:
            raise RuntimeApplyError(Diagnostic(f"no module '{segment}' on the way to '{path}'", obj=path))
        module = child
    return unwrap_sites(module) if unwrap else module


def resolve_slot(root: nn.Module, path: str, param: str) -> tuple[nn.Module, str]:
    """Returns the original module that owns parameter slot ``path.param``."""
    module = resolve_module(root, path, unwrap=True)
    if param not in module._parameters:
        raise RuntimeApplyError(Diagnostic(f"module '{path}' has no parameter '{param}'", obj=f"{path}.{param}"))
    return module, param


def derive_generator(seed: int, *keys: str) -> torch.Generator:
    """Returns a CPU generator seeded from ``seed`` and string keys.

    Why: one generator per (delta, site) makes each site's initial values
    independent of which other deltas a spec declares or in what order.
    """
    digest = hashlib.sha256("\x1f".join((str(seed), *keys)).encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


@dataclass
class FlagSnapshot:
    """The ``requires_grad`` flag of every parameter object of a model, by identity."""

    flags: list[tuple[nn.Parameter, bool]] = field(default_factory=list)

    def restore(self) -> None:
        """Puts every recorded flag back."""
        for param, flag in self.flags:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


def snapshot_flags(model: nn.Module) -> FlagSnapshot:
    """Records ``requires_grad`` for each parameter object (tied ones once)."""
    return FlagSnapshot([(p, p.requires_grad) for p in model.parameters()])


#: Per-module dicts whose *contents* a wrapper might change in place.
_TABLES = ("_parameters", "_buffers", "_modules")


class ModuleSnapshot:
    """What one original module looked like before we wrapped it.

    Records its attribute names and the contents of its parameter, buffer,
    child and hook tables (the objects, not their values), so that a
    wrapper's changes to it (quantization taking the weight out, hooks) can
    be taken back exactly.

    Why no tensor values or storages: the tensors in the tables are the very
    objects restored, and their values are the live ones. Keeping their
    storage would pin memory after ``model.to(...)`` and put stale storage
    (the old dtype or device) back on ``remove()``; it would not survive a
    pickle either (storages shared by two tensor objects are saved twice).

    Args:
        module: The module about to be wrapped.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.attrs = dict(module.__dict__)
        # Shallow copies of every table (parameters, hooks, ...): the objects, not the values.
        self.tables = {k: dict(v) for k, v in self.attrs.items() if isinstance(v, dict)}
        self.released: set[tuple[str, str]] = set()

    def restore(self, *, hooks: bool = True) -> None:
        """Puts the module's tables and attributes back as recorded.

        Args:
            hooks: Also restore hook tables (a rollback does; ``remove()``
                keeps hooks the user added since).
        """
        current = self.module.__dict__
        for key in [k for k in current if k not in self.attrs]:
            del current[key]
        for key, saved in self.tables.items():
            if key not in _TABLES and not hooks:
                continue
            table = self.attrs[key]
            current[key] = table
            table.clear()
            table.update(saved)

    def taken_out(self) -> list[tuple[str, str, torch.Tensor]]:
        """Returns ``(table, name, tensor)`` for recorded tensors no longer in the module's tables.

        These (a quantized site's original weight) are outside the module
        tree, so ``model.to(...)`` does not reach them.
        """
        return [
            (table, name, original)
            for table in ("_parameters", "_buffers")
            for name, original in self.tables[table].items()
            if original is not None and self.attrs[table].get(name) is not original
        ]

    def release_quantized(self) -> None:
        """Frees the storage of every original tensor that a wrapper took out of the module.

        The original ``Parameter`` objects are kept (emptied), so ``remove()``
        can put the same objects back, filled with dequantized values.
        """
        for table, name, original in self.taken_out():
            original.data = torch.empty(0, dtype=original.dtype, device=original.device)
            self.released.add((table, name))

    def keeps_all(self) -> bool:
        """True when every original tensor can still be restored exactly."""
        return not self.released


def _plan_sites(plan_dict: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Lists ``(owner, site)`` for every delta and quantize site of a plan."""
    found = [(name, site) for name, delta in plan_dict["deltas"].items() for site in delta["sites"]]
    found += [("quantize", site) for site in plan_dict.get("base", {}).get("quantize", [])]
    return found


def find_fingerprint_differences(plan_dict: dict[str, Any], sig: Any, limit: int = 5) -> list[str]:
    """Explains why a model's signature does not match the plan's.

    Args:
        plan_dict: ``Plan.to_dict()``.
        sig: The model's ``ModelSignature``.
        limit: How many differences to report at most.

    Returns:
        Lines naming the first differing modules (model order of the plan),
        or a summary line when only parameters elsewhere differ.
    """
    diffs: list[str] = []
    want = plan_dict["model"]
    if want.get("cls") and want["cls"] != sig.cls:
        diffs.append(f"model class: plan has {want['cls']}, model is {sig.cls}")
    seen: set[str] = set()
    for owner, site in _plan_sites(plan_dict):
        path = site.get("path", "")
        if path in seen:
            continue
        seen.add(path)
        info = sig.modules.get(path)
        if info is None:
            diffs.append(f"'{path}' (used by '{owner}'): missing from the model")
        elif site.get("module") and site["module"] != info.cls:
            diffs.append(f"'{path}': plan has {site['module']}, model has {info.cls}")
        elif "in_features" in site and (site["in_features"], site["out_features"]) != (
            info.in_features,
            info.out_features,
        ):
            diffs.append(
                f"'{path}': plan has {site['in_features']}->{site['out_features']} features, "
                f"model has {info.in_features}->{info.out_features}"
            )
        elif "shape" in site and "param" in site:
            shapes = {p.name: tuple(p.shape) for p in info.params}
            if shapes.get(site["param"]) != tuple(site["shape"]):
                diffs.append(
                    f"'{path}.{site['param']}': plan has shape {tuple(site['shape'])}, "
                    f"model has {shapes.get(site['param'])}"
                )
        if len(diffs) >= limit:
            break
    if not diffs and want.get("params") is not None and want["params"] != sig.total_params:
        diffs.append(f"parameter count: plan has {want['params']:,}, model has {sig.total_params:,}")
    if not diffs:
        diffs.append("modules the plan does not touch differ (names, classes or parameter shapes)")
    return diffs[:limit]


def _check_fingerprint(plan: Any, model: nn.Module, sig: Any = None) -> None:
    """Raises RuntimeApplyError when ``model`` is not the model ``plan`` was compiled for."""
    from adaptlang.plan.signature import signature_of

    plan_dict = plan.to_dict()
    sig = sig if sig is not None else signature_of(model)
    expected = plan_dict["model"]["fingerprint"]
    if sig.fingerprint == expected:
        return
    raise RuntimeApplyError(
        Diagnostic(
            "the model does not match the plan (structural fingerprints differ)",
            obj=plan_dict["model"].get("name") or sig.cls,
            hint="compile the spec against this model, or pass the spec instead of the plan",
            notes=tuple(find_fingerprint_differences(plan_dict, sig)),
        )
    )


def bind_plan(model: nn.Module, spec_or_plan: Any, signature: Any = None) -> Any:
    """Returns a plan for ``model``: compiled from a spec, or checked if given one.

    Args:
        model: The real model to patch.
        spec_or_plan: A ``Plan``, a ``Spec``, a ``.adapt`` path, spec text, or
            a plan JSON file (``*.json``).
        signature: ``model``'s signature when the caller has already read it
            (reading a large model's structure twice is most of an apply).

    Returns:
        The ``Plan``.

    Raises:
        RuntimeApplyError: A plan whose fingerprint differs from the model's,
            naming the first differing modules.
        SpecError, BindError: From compiling a spec.
    """
    from adaptlang.plan.compiler import compile_plan
    from adaptlang.plan.plan import Plan

    if isinstance(spec_or_plan, (str, Path)) and str(spec_or_plan).endswith(".json"):
        spec_or_plan = Plan.from_json(Path(spec_or_plan).read_text())
    if isinstance(spec_or_plan, Plan):
        _check_fingerprint(spec_or_plan, model, signature)
        return spec_or_plan
    return compile_plan(spec_or_plan, model if signature is None else signature)
