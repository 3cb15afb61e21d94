"""A disk cache of preset signatures, so compiling against a preset is instant.

Building a preset needs torch and transformers, and importing those takes
seconds; the signature itself is a few hundred kilobytes of plain values. The
first compile against a preset stores its signature as JSON; later processes
read it back and never import torch. The cache key covers everything the
signature depends on: the preset's table entry, the task head and label count
it was built with (``--head``, ``--num-labels``), the installed transformers
and torch versions, adaptlang's version and this file's format. A cached file is
trusted only if its recomputed fingerprint matches the one it stores, and
every failure to read or write (a read-only home, a corrupt file) falls back
to building the model, silently: the cache can make compiling faster, never
different.

Location: ``$ADAPTLANG_CACHE_DIR``, else ``$XDG_CACHE_HOME/adaptlang``, else
``~/.cache/adaptlang``; ``ADAPTLANG_NO_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from adaptlang.plan.signature import ModelSignature, ModuleInfo, ParamInfo, _fingerprint

__all__ = ["cache_dir", "read_cached_signature", "signature_from_dict", "signature_to_dict",
           "write_cached_signature"]

#: Bump when the JSON layout below changes.
CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """Returns the cache folder, or None when caching is turned off."""
    if os.environ.get("ADAPTLANG_NO_CACHE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return None
    root = os.environ.get("ADAPTLANG_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "adaptlang"


def signature_to_dict(sig: ModelSignature) -> dict[str, Any]:
    """Returns ``sig`` as JSON-able data (modules in model order)."""
    data = asdict(sig)
    data["modules"] = [data["modules"][path] for path in sig.modules]
    return data


def signature_from_dict(data: dict[str, Any]) -> ModelSignature:
    """Rebuilds a signature written by :func:`signature_to_dict`.

    Raises:
        KeyError, TypeError, ValueError: On data of another layout.
    """
    modules = {}
    for m in data["modules"]:
        params = tuple(ParamInfo(p["name"], tuple(p["shape"]), p["dtype"]) for p in m["params"])
        modules[m["path"]] = ModuleInfo(
            path=m["path"], cls=m["cls"], bases=tuple(m["bases"]), params=params,
            children=tuple(m["children"]), in_features=m["in_features"],
            out_features=m["out_features"], is_list=bool(m["is_list"]))
    return ModelSignature(
        name=data["name"], family=data["family"], cls=data["cls"], modules=modules,
        roles={role: tuple(paths) for role, paths in data["roles"].items()},
        config=dict(data["config"]), total_params=int(data["total_params"]),
        tied=dict(data["tied"]), fingerprint=data["fingerprint"])


def _version(package: str) -> str:
    """The installed version of ``package`` (read from metadata: no import)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def _cache_file(name: str, head: str | None = None, num_labels: int | None = None) -> Path | None:
    """The cache file of preset ``name`` (with ``head``) under the current key, or None when off."""
    folder = cache_dir()
    if folder is None:
        return None
    from adaptlang import __version__
    from adaptlang.plan.presets import PRESETS

    preset = PRESETS[name]
    key = json.dumps({
        "format": CACHE_FORMAT, "adaptlang": __version__, "transformers": _version("transformers"),
        "torch": _version("torch"), "preset": asdict(preset), "head": head, "num_labels": num_labels,
    }, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return folder / "signatures" / f"{name}-{digest}.json"


def read_cached_signature(name: str, head: str | None = None,
                          num_labels: int | None = None) -> ModelSignature | None:
    """Returns preset ``name``'s cached signature (built with ``head``), or None (missing, stale, corrupt or off)."""
    path = _cache_file(name, head, num_labels)
    if path is None or not path.is_file():
        return None
    try:
        sig = signature_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # a damaged file: rebuild
        return None
    if sig.name != name or _fingerprint(sig.modules) != sig.fingerprint:
        return None  # a damaged or hand-edited file: rebuild rather than trust it
    return sig


def write_cached_signature(name: str, sig: ModelSignature, head: str | None = None,
                           num_labels: int | None = None) -> None:
    """Stores preset ``name``'s signature (built with ``head``) atomically; any failure is ignored."""
    path = _cache_file(name, head, num_labels)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(signature_to_dict(sig), handle, separators=(",", ":"))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return
