"""What a bundle says about itself: the manifest, provenance, and the tensors a plan implies.

The manifest is one JSON object stored under the ``adaptlang`` key of the
safetensors metadata (``docs/bundles.md`` lists every field). It carries the
task's own plan (a complete plan JSON restricted to the task's deltas, so it
can be applied alone), the spec source it came from, the sha256 of the spec
and of the whole plan, the base model's structural fingerprint and the
per-module structure behind it, and a sha256 per tensor.

:func:`expected_tensors` is the bundle layout of each delta kind: the local
names and shapes of the tensors a plan site implies. A bundle is checked
against it before anything touches a model, so a bundle that does not fit
its own plan is refused with a message, not a failure halfway through
patching.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from adaptlang.errors import BundleError, Diagnostic

__all__ = [
    "BUNDLE_FORMAT", "MANIFEST_KEY", "Provenance", "TensorSpec", "describe_structure",
    "expected_tensors", "manifest_json", "restrict_plan", "sha256_text", "split_key",
]

#: Version of the bundle layout (``bundle_format``); readers refuse newer ones.
BUNDLE_FORMAT = 1
#: The safetensors metadata key holding the manifest JSON.
MANIFEST_KEY = "adaptlang"


def sha256_text(text: str) -> str:
    """Returns the sha256 of ``text`` in UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_json(manifest: dict[str, Any]) -> str:
    """Serializes a manifest deterministically (sorted keys, compact, ASCII)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class Provenance:
    """Where a task came from: the spec's source and the plan compiled from it.

    Attributes:
        spec_path: The spec's file name (relative, no folders of the machine
            it was written on), or None when the task was applied from a plan.
        sources: File name -> source text, the root spec first, then the
            files it uses.
        overrides: ``let`` constants replaced when compiling (``--set``).
        plan_sha256: The sha256 of the whole plan the task was part of.
    """

    spec_path: str | None
    sources: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)
    plan_sha256: str = ""

    @property
    def spec_sha256(self) -> str | None:
        """The sha256 of the root spec's source, or None without a spec."""
        if self.spec_path is None:
            return None
        return sha256_text(self.sources[self.spec_path])

    def spec_section(self) -> dict[str, Any] | None:
        """Returns the manifest's ``spec`` section (None when there is no spec)."""
        if self.spec_path is None:
            return None
        return {"path": self.spec_path, "sha256": self.spec_sha256, "sources": dict(self.sources),
                "source_sha256": {name: sha256_text(text) for name, text in self.sources.items()},
                "overrides": dict(self.overrides)}

    @classmethod
    def from_spec(cls, spec: Any, plan_sha256: str, overrides: dict[str, float] | None = None) -> "Provenance":
        """Records a checked spec's sources with portable names.

        The root is named by its base name; files it uses by their path
        relative to the root's folder (``"<string>"`` stays as is).
        """
        root = spec.path
        root_dir = os.path.dirname(root) if root != "<string>" else ""
        sources: dict[str, str] = {}
        for name, text in spec.sources.items():
            if name == root:
                shown = os.path.basename(root) if root != "<string>" else root
            else:
                shown = os.path.relpath(name, root_dir or ".").replace(os.sep, "/")
            sources[shown] = text
        root_name = os.path.basename(root) if root != "<string>" else root
        ordered = {root_name: sources.pop(root_name), **sources}
        return cls(root_name, ordered, dict(overrides or {}), plan_sha256)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "Provenance":
        """Reads the provenance back from a checked manifest."""
        spec = manifest.get("spec")
        if spec is None:
            return cls(None, {}, {}, manifest["plan_sha256"])
        return cls(spec["path"], dict(spec["sources"]), dict(spec.get("overrides", {})), manifest["plan_sha256"])


def describe_structure(sig: Any) -> dict[str, str]:
    """Returns every module of a signature as ``path -> "Class name:shape ..."`` (the fingerprint's input).

    Stored in the manifest so that a bundle refused for a different model
    can name the modules that differ, on either side.
    """
    out = {}
    for path, info in sig.modules.items():
        params = " ".join(f"{p.name}:{'x'.join(str(d) for d in p.shape)}" for p in info.params)
        out[path] = f"{info.cls} {params}".rstrip()
    return out


def restrict_plan(plan_dict: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """Returns a complete plan JSON dict holding only ``tasks`` and their deltas.

    The model section and base transforms are kept; the result passes the
    plan schema and consistency checks (its ``plan_sha256`` is recomputed by
    :class:`~adaptlang.plan.plan.Plan`).
    """
    wanted = [t["name"] for task in tasks for t in plan_dict["tasks"][task]["deltas"]]
    deltas = {name: plan_dict["deltas"][name] for name in sorted(set(wanted))}
    body = {k: v for k, v in plan_dict.items() if k not in ("deltas", "tasks", "plan_sha256")}
    return json.loads(json.dumps({**body, "deltas": deltas, "tasks": {t: plan_dict["tasks"][t] for t in tasks}}))


def split_key(key: str) -> tuple[str, str, str]:
    """Splits ``"{delta}/{site path}/{local name}"`` into its three parts."""
    delta, _, rest = key.partition("/")
    path, _, local = rest.rpartition("/")
    return delta, path, local


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a plan site implies.

    Attributes:
        shape: Its shape.
        index: True for integer positions (sparse ``indices``), False for values.
    """

    shape: tuple[int, ...]
    index: bool = False


def expected_tensors(kind: str, site: dict[str, Any]) -> dict[str, TensorSpec]:
    """Returns the bundle tensors of one plan site by local name (the runtime's ``adapter_params`` names).

    Raises:
        BundleError: A delta kind this adaptlang does not know.
    """
    if kind == "lora":
        r, fin, fout = int(site["rank"]), int(site["in_features"]), int(site["out_features"])
        out = {"lora_A": TensorSpec((r, fin)), "lora_B": TensorSpec((fout, r))}
        if site.get("bias"):
            out["lora_bias"] = TensorSpec((fout,))
        if site.get("variant") == "dora":
            out["magnitude"] = TensorSpec((fout,))
        return out
    if kind == "ia3":
        return {"ia3_l": TensorSpec((int(site["in_features"] if site.get("feedforward") else site["out_features"]),))}
    if kind == "adapter":
        dim, size = int(site["dim"]), int(site["size"])
        return {"down.weight": TensorSpec((size, dim)), "down.bias": TensorSpec((size,)),
                "up.weight": TensorSpec((dim, size)), "up.bias": TensorSpec((dim,))}
    if kind == "prompt":
        return {"weight": TensorSpec((int(site["tokens"]), int(site["dim"])))}
    if kind == "tune":
        return {site["param"]: TensorSpec(tuple(int(d) for d in site["shape"]))}
    if kind == "sparse":
        k = int(site["k"])
        return {"values": TensorSpec((k,)), "indices": TensorSpec((k,), index=True)}
    raise BundleError(Diagnostic(f"unknown delta kind '{kind}'", obj=kind,
                                 hint="this bundle may come from a newer adaptlang"))


def expected_bundle(plan_dict: dict[str, Any], deltas: list[str]) -> dict[str, TensorSpec]:
    """Returns every tensor key a bundle of ``deltas`` must hold, with its spec."""
    out: dict[str, TensorSpec] = {}
    for name in deltas:
        delta = plan_dict["deltas"][name]
        for site in delta["sites"]:
            for local, spec in expected_tensors(delta["kind"], site).items():
                out[f"{name}/{site['path']}/{local}"] = spec
    return out
