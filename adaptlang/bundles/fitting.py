"""Does a bundle fit this model? Structure differences, and re-targeting a plan to the sites that fit.

A bundle records its base model's fingerprint and per-module structure
(``describe_structure``). When the model's fingerprint differs,
:func:`structure_differences` names the first modules that differ, on both
sides. With ``strict=False``, :func:`retarget_plan` keeps the sites that fit
this model (same module class and widths, or parameter shape) and rebuilds
the plan's counts for it, listing what it left out.
"""

from __future__ import annotations

from typing import Any

from adaptlang.bundles.manifest import describe_structure
from adaptlang.plan.ties import SHARED, UNTIED, full_param_path, tie_group

__all__ = ["retarget_plan", "site_misfit", "structure_differences"]


def structure_differences(recorded: dict[str, str], sig: Any, limit: int = 5) -> list[str]:
    """Lists the first modules that differ between a recorded structure and a model's signature.

    Args:
        recorded: ``path -> description`` from the bundle's manifest.
        sig: The model's ``ModelSignature``.
        limit: At most this many lines.

    Returns:
        Lines in the bundle's model order, then modules only this model has.
    """
    current = describe_structure(sig)
    lines = []
    for path, want in recorded.items():
        have = current.get(path)
        if have is None:
            lines.append(f"'{path or '<root>'}' ({want}): in the bundle's model, missing from this one")
        elif have != want:
            lines.append(f"'{path or '<root>'}': the bundle's model has {want}, this one has {have}")
    lines += [f"'{path}' ({desc}): only in this model" for path, desc in current.items() if path not in recorded]
    return lines[:limit]


def site_misfit(kind: str, site: dict[str, Any], sig: Any) -> str | None:
    """Returns why a plan site does not fit a model, or None when it does."""
    path = site["path"]
    info = sig.modules.get(path)
    if info is None:
        return f"'{path}' is missing"
    if "param" in site:
        shapes = {p.name: tuple(p.shape) for p in info.params}
        have = shapes.get(site["param"])
        if have != tuple(site["shape"]):
            return f"'{path}.{site['param']}' has shape {have}, the bundle needs {tuple(site['shape'])}"
        # A re-trained tied tensor means something else where the tie differs (adaptlang.plan.ties).
        own = full_param_path(path, site["param"])
        want = sorted({*site.get(SHARED, ()), *site.get(UNTIED, ())} - {own})
        tied = sorted(set(tie_group(sig, own)) - {own})
        if want != tied:
            return (f"'{own}' is {'tied to ' + ', '.join(tied) if tied else 'not tied'} here, the bundle needs it "
                    f"{'tied to ' + ', '.join(want) if want else 'untied'}")
        return None
    if site.get("module") and site["module"] != info.cls:
        return f"'{path}' is a {info.cls}, the bundle needs a {site['module']}"
    if "in_features" in site and (site["in_features"], site["out_features"]) != (info.in_features, info.out_features):
        return (f"'{path}' maps {info.in_features}->{info.out_features}, the bundle needs "
                f"{site['in_features']}->{site['out_features']}")
    if kind == "adapter":
        width = info.in_features if site.get("placement") == "before" else info.out_features
        if width is not None and width != site["dim"]:
            return f"'{path}' is {width} wide, the adapter needs {site['dim']}"
    if kind == "prompt" and info.out_features is not None and info.out_features != site["dim"]:
        return f"'{path}' embeds into {info.out_features}, the prompt needs {site['dim']}"
    return None


def retarget_plan(plan: dict[str, Any], sig: Any) -> tuple[dict[str, Any], list[str], set[str]]:
    """Keeps the sites of a plan that fit ``sig`` and recounts everything for it.

    Args:
        plan: A plan JSON dict (one bundle's task plan).
        sig: The model's signature.

    Returns:
        ``(plan dict, skipped, kept keys)``: the re-targeted plan (no
        ``plan_sha256``; tasks left without deltas are dropped), one line per
        site, delta or task left out, and the kept ``"{delta}/{site path}"`` keys.
    """
    from adaptlang.plan import accounting as acc

    skipped: list[str] = []
    kept_keys: set[str] = set()
    deltas = {}
    for name, delta in plan["deltas"].items():
        sites = []
        for site in delta["sites"]:
            reason = site_misfit(delta["kind"], site, sig)
            if reason is None:
                sites.append(site)
                kept_keys.add(f"{name}/{site['path']}")
            else:
                skipped.append(f"delta '{name}': skipped {reason}")
        if sites:
            deltas[name] = {**delta, "sites": sites, "site_count": len(sites),
                            "params": sum(s["params"] for s in sites)}
        else:
            skipped.append(f"delta '{name}': no site fits this model; left out")
    quantize = []
    for q in plan["base"]["quantize"]:
        reason = site_misfit("quantize", q, sig)
        if reason is None:
            quantize.append(q)
        else:
            skipped.append(f"quantize: skipped {reason}")
    packed = {f"{s['path']}.{s['param']}" if s["path"] else s["param"]: s["bytes_after"] for s in quantize}
    base_bytes = acc.sum_param_bytes(acc.list_unique_params(sig), packed)
    tasks = {}
    for name, task in plan["tasks"].items():
        terms = [t for t in task["deltas"] if t["name"] in deltas]
        if not terms:
            skipped.append(f"task '{name}': none of its deltas fits this model; left out")
            continue
        section = {"deltas": terms, **acc.count_task(terms, {n: d["params"] for n, d in deltas.items()})}
        section["memory"] = acc.estimate_plan_task_memory(sig, section, deltas, base_bytes)
        tasks[name] = section
    used = {t["name"] for task in tasks.values() for t in task["deltas"]}
    model = {"name": plan["model"]["name"], "cls": sig.cls, "family": sig.family, "fingerprint": sig.fingerprint,
             "params": sig.total_params, "dtype": acc.find_dominant_dtype(sig)}
    out = {**{k: v for k, v in plan.items() if k != "plan_sha256"}, "model": model,
           "deltas": {n: d for n, d in deltas.items() if n in used}, "base": {"quantize": quantize}, "tasks": tasks}
    return out, skipped, kept_keys
