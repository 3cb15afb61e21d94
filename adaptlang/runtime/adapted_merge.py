"""Merging for :class:`~adaptlang.runtime.adapted.Adapted`: folding the active task into the base weights and back.

A mixin: the handle's ``merge``, ``unmerge`` and ``merged``, on the handle's
``_patch``, ``_active``, ``_merged``, ``_merged_paths`` and ``_merge_report``.
What one site does is :mod:`adaptlang.runtime.merging`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.concurrency import changes_model
from adaptlang.runtime.merging import MERGEABLE_KINDS, NonFiniteMerge, check_keep, merge_refusal
from adaptlang.runtime.shards import refuse_if_sharded

__all__ = ["MergeMethods", "check_finite_deltas", "tied_parameter_ids"]


class MergeMethods:
    """``merge`` / ``unmerge`` / ``merged`` of :class:`~adaptlang.runtime.adapted.Adapted` (a mixin)."""

    _patch: Any
    _active: str | None
    _merged: bool
    _merged_paths: list[str]
    _merge_report: dict[str, Any]
    model: nn.Module
    _check_live: Any  # the handle's: raises once removed

    @changes_model("merge")
    def merge(self, keep: str = "device") -> dict[str, Any]:
        """Folds the active task's LoRA/DoRA, IA3 and sparse deltas into the base weights.

        Formula: :mod:`adaptlang.runtime.merging` (DoRA as PEFT merges it). Sites
        that cannot merge stay active, unmerged, and are reported, not an error
        (a quantized base, only adapters, a tied weight, a ``tune`` copy, a base
        weight that trains: :func:`~adaptlang.runtime.merging.merge_refusal`).
        An unexpected error unmerges the sites already done, then propagates.

        Args:
            keep: ``"device"`` (default): keep the original of every base tensor a
                merge changes, beside it, so :meth:`unmerge` and :meth:`remove`
                restore it bit for bit in every dtype. Memory: one full copy of each
                weight (and bias) a LoRA/DoRA/IA3 delta folds into, plus k entries
                and positions per sparse-only target, until unmerged
                (``report["kept_bytes"]``). ``"cpu"``: the same copies in host memory
                (still exact; a device-to-host copy each way). ``"none"``: no copies;
                unmerging inverts the arithmetic and is exact only **within
                rounding** (sparse entries stay exact), and a factor with a zero
                entry does not merge.

        Returns:
            ``{"merged": [site paths], "not_merged": {site path: reason}, "keep": keep,
            "kept_bytes": int}``. While merged, the report of the merge in force
            (merging twice is a no-op).

        Raises:
            RuntimeApplyError: An unknown ``keep`` (nothing changes), or removed.
            NonFiniteMerge: A site's merged weight would hold NaN or infinity (a
                ``RuntimeApplyError``): the merge is refused, every base weight is
                as it was, and unmerge/remove still work.
        """
        self._check_live()
        check_keep(keep)
        if self._merged:
            return copy.deepcopy(self._merge_report)
        refuse_if_sharded(self.model, "merge()",
                          "save() the bundles, load them onto an unsharded model (adaptlang.load), and merge there")
        report: dict[str, Any] = {"merged": [], "not_merged": {}, "keep": keep, "kept_bytes": 0}
        tied = tied_parameter_ids(self.model)
        if self._patch.base_ties is not None:
            # A tune copy in one slot of a tied tensor leaves the original alone in the other:
            # folding into it would still change the base the other name comes back to.
            tied |= set(self._patch.base_ties)
        tuned = self._patch.tune.copy_ids()
        config = self._patch.configs[self._active]
        check_finite_deltas({path: self._patch.sites[path] for path in config.active_paths}, set(config.deltas))
        try:
            for path in self._patch.configs[self._active].active_paths:
                site = self._patch.sites[path]
                reason = merge_refusal(site, path in self._patch.quantized, tied, tuned)
                if reason is None:
                    try:
                        site.merge(keep)
                    except NonFiniteMerge:
                        raise  # broken deltas: the whole merge is refused (the sites done are unmerged below)
                    except (RuntimeApplyError, NotImplementedError, ValueError) as exc:
                        reason = str(exc).splitlines()[0]
                if reason is not None:
                    report["not_merged"][path] = reason
                    continue
                report["merged"].append(path)
                report["kept_bytes"] += site.kept_bytes
        except BaseException:
            for path in reversed(report["merged"]):
                self._patch.sites[path].unmerge()
            raise
        self._merged = True
        self._merged_paths = list(report["merged"])
        self._merge_report = report
        return copy.deepcopy(report)

    @changes_model("unmerge")
    def unmerge(self) -> None:
        """Undoes :meth:`merge`: the base weights come back bit for bit (``keep="none"``: within rounding).

        Whatever the delta factors became meanwhile: merged sites run no LoRA
        product, so their factors get no gradients while merged, and a factor
        changed anyway (by hand, or weight decay) takes effect from here on,
        not in what comes back. After ``model.to(...)`` while merged, the
        originals come back cast from their merge-time dtype as ``.to()``
        casts: exact for a device move or an up-cast; a down-cast rounds them
        once (the new dtype cannot hold every original bit).

        Raises:
            RuntimeApplyError: A merged parameter was removed or reshaped meanwhile.
        """
        self._check_live()
        if not self._merged:
            return
        refuse_if_sharded(self.model, "unmerge()",
                          "unmerge before sharding: the merged weights were sharded as they are")
        for path in reversed(self._merged_paths):
            self._patch.sites[path].unmerge()
        self._merged = False
        self._merged_paths = []
        self._merge_report = {}

    @property
    def merged(self) -> bool:
        """True between :meth:`merge` and :meth:`unmerge`."""
        return self._merged


def check_finite_deltas(sites: dict[str, Any], deltas: set[str]) -> None:
    """Refuses a merge before any site merges when an active mergeable delta holds NaN or infinity.

    One ``isfinite`` per delta tensor (factors are small next to the weights).
    Finite factors whose product overflows are caught per site by
    :func:`~adaptlang.runtime.merging.merge_parts`, after which the sites
    already merged are unmerged.

    Raises:
        NonFiniteMerge: Naming the delta, the site and the tensor.
    """
    for path, site in sites.items():
        for name, part in site.parts.items():
            if name not in deltas or part.kind not in MERGEABLE_KINDS:
                continue
            for local, tensor in [*part.named_parameters(), *part.named_buffers()]:
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise NonFiniteMerge(Diagnostic(
                        f"cannot merge: delta '{name}' at '{path}' holds NaN or infinite values in '{local}'; "
                        "nothing was merged", obj=name,
                        hint="the delta's values are damaged (a diverged run, or set by hand); the base weights "
                             "are unchanged; load or train intact values first"))


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """Returns ``id()`` of every parameter the model reaches at more than one path (tied weights)."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (tied if id(p) in seen else seen).add(id(p))
    return tied
