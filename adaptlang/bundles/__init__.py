"""Bundles: one self-describing safetensors file per task, and PEFT interop.

Public entry points (the top-level ``adaptlang.apply``/``adaptlang.load``
return :class:`BundleAdapted`):

* :meth:`BundleAdapted.save` — ``dir/<task>.safetensors`` per task;
* :func:`load` — bundles onto a fresh base model, no spec needed;
* :meth:`BundleAdapted.export_peft`, :func:`export_bundle_to_peft`,
  :func:`import_peft` — PEFT adapter folders, both ways;
* :func:`read_bundle`, :func:`read_manifest` — checked reading.

The file format is documented in ``docs/bundles.md``.
"""

from __future__ import annotations

from typing import Any

from adaptlang.bundles.adapted import BundleAdapted, apply_with_provenance
from adaptlang.bundles.bundle import Bundle, read_bundle, read_manifest
from adaptlang.bundles.loading import load
from adaptlang.bundles.manifest import BUNDLE_FORMAT, Provenance

__all__ = [
    "BUNDLE_FORMAT", "Bundle", "BundleAdapted", "Provenance", "apply", "export_bundle_to_peft", "import_peft",
    "load", "read_bundle", "read_manifest",
]


def apply(model: Any, spec_or_plan: Any, **kwargs: Any) -> BundleAdapted:
    """Patches ``model`` (see :func:`adaptlang.bundles.adapted.apply_with_provenance`)."""
    return apply_with_provenance(model, spec_or_plan, **kwargs)


def export_bundle_to_peft(path: Any, folder: Any, base_model: str | None = None) -> Any:
    """Converts a bundle file to a PEFT adapter folder (see :mod:`adaptlang.bundles.peft_export`)."""
    from adaptlang.bundles.peft_export import export_bundle

    return export_bundle(path, folder, base_model=base_model)


def import_peft(folder: Any, model: Any, out: Any, name: str | None = None) -> Any:
    """Converts a PEFT adapter folder to a ``.adapt`` spec and a bundle (see :mod:`adaptlang.bundles.peft_import`)."""
    from adaptlang.bundles.peft_import import import_peft_adapter

    return import_peft_adapter(folder, model, out, name=name)
