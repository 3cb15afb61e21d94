"""The undo actions of a patch, as plain data: they survive ``copy.deepcopy`` and pickling.

:class:`~adaptlang.runtime.transaction.Transaction` keeps one action per
change ``apply`` made. Each is a small object holding the model objects it
restores, and is called as ``action(removing)``.

Why not closures: ``copy.deepcopy`` copies a function by reference, so a
deep copy of an adapted model (or of its handle) would keep undo actions
that point at the *original* model's modules, and its ``remove()`` would
un-patch the original. Closures cannot be pickled either. Objects are copied
through the same memo as the model, so a copy's actions point at the copy's
modules; pickling stores them by class name (module-level classes only, no
code).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["Detach", "RemovePrompts", "RestoreFlags", "RestoreTune", "UnwrapSite", "dequantize_into"]


class RestoreFlags:
    """Puts back every ``requires_grad`` flag a :class:`~adaptlang.runtime.binding.FlagSnapshot` recorded."""

    def __init__(self, flags: Any):
        self.flags = flags

    def __call__(self, removing: bool) -> None:
        self.flags.restore()


class RemovePrompts:
    """Takes the prompt hook and the ``adaptlang_prompts`` module off the root model."""

    def __init__(self, prompts: Any):
        self.prompts = prompts

    def __call__(self, removing: bool) -> None:
        self.prompts.remove()


class RestoreTune:
    """Puts every original parameter back into the slots ``tune`` deltas swapped."""

    def __init__(self, tune: Any):
        self.tune = tune

    def __call__(self, removing: bool) -> None:
        self.tune.restore()


class Detach:
    """Takes an entry we added to the root model off again: a child module, or a plain attribute.

    Args:
        model: The root model.
        table: ``"_modules"`` (a child we registered) or ``"__dict__"`` (a plain attribute).
        attr: The entry's name.
    """

    def __init__(self, model: nn.Module, table: str, attr: str):
        self.model, self.table, self.attr = model, table, attr

    def __call__(self, removing: bool) -> None:
        getattr(self.model, self.table).pop(self.attr, None)


class UnwrapSite:
    """Puts the original module back in place of its ``SiteModule``, as its snapshot recorded it.

    Args:
        patch: The :class:`~adaptlang.runtime.transaction.Patch` (which sites are quantized).
        path: The site's plan path.
        parent: The module whose child slot holds the site.
        name: That slot's name.
        original: The wrapped module.
        snap: Its :class:`~adaptlang.runtime.binding.ModuleSnapshot` from before wrapping.
        site: The ``SiteModule``.
    """

    def __init__(self, patch: Any, path: str, parent: nn.Module, name: str, original: nn.Module,
                 snap: Any, site: nn.Module):
        self.patch, self.path, self.parent, self.name = patch, path, parent, name
        self.original, self.snap, self.site = original, snap, site

    def __call__(self, removing: bool) -> None:
        if removing and self.path in self.patch.quantized and not self.snap.keeps_all():
            dequantize_into(self.site, self.snap)
        self.parent._modules[self.name] = self.original
        self.snap.restore(hooks=not removing)


def dequantize_into(site: Any, snap: Any) -> None:
    """Gives released original parameters the site's dequantized values (same objects).

    The values take the dtype and device of the dequantized weight, which
    follow ``model.to(...)`` calls made since apply (the released original,
    outside the module tree, did not).
    """
    base = site.unwrap()
    for table in ("_parameters", "_buffers"):
        for name, original in snap.tables[table].items():
            if original is None or (table, name) not in snap.released:
                continue
            now = base.__dict__[table].get(name)
            if now is not None and now is not original:
                original.data = now.detach()
