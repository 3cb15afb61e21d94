"""Tied parameters in the plan: one tensor reached under several names.

A model ties two parameters when the same tensor sits in two modules' slots
(Llama's or GPT-2's ``lm_head.weight`` and the input embedding, BERT's MLM
decoder and its word embeddings, T5's ``shared`` and both stacks'
``embed_tokens``). The signature records every later name of a tensor under
its first one (``ModelSignature.tied``); the *group* of a tensor is all its
names, model order.

Deltas that re-train a parameter (``tune``, ``sparse``) act on slots, so a
tie decides what they mean. The rule, per tensor:

* every selected name of the group gets the delta: one trained copy (or one
  set of sparse values), counted once, used at all of them, as full
  fine-tuning of that tensor would; the plan site sits at the first selected
  name and lists the others under ``shared_with``;
* names of the group the selector leaves out keep the frozen original: the
  delta *unties* them, deliberately, and the site lists them under
  ``untied_from`` (the summary says so too).

Both fields appear only on sites of tied tensors, so plans of untied models
are unchanged. Module-level deltas (LoRA, IA3, adapters) change one module's
map and never the tensor: they need no rule here.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = [
    "SHARED", "UNTIED", "describe_tie_notes", "full_param_path", "group_slots",
    "site_slots", "tie_group", "tie_groups",
]

#: Site field: other names of the tensor that use the same trained copy (values).
SHARED = "shared_with"
#: Site field: other names of the tensor that keep the frozen original.
UNTIED = "untied_from"


def full_param_path(path: str, param: str) -> str:
    """``("lm_head", "weight")`` -> ``"lm_head.weight"`` (a root parameter is its name)."""
    return f"{path}.{param}" if path else param


def tie_groups(sig: Any) -> dict[str, list[str]]:
    """Returns every tied tensor's names, model order, keyed by its first name.

    Untied parameters are left out. Model order is read from the modules, not
    from ``sig.tied``'s order, so a signature read back from the cache gives
    the same plan bytes.
    """
    if not sig.tied:
        return {}
    members = set(sig.tied) | set(sig.tied.values())
    groups: dict[str, list[str]] = {}
    for path, info in sig.modules.items():
        for p in info.params:
            full = full_param_path(path, p.name)
            if full in members:
                groups.setdefault(sig.tied.get(full, full), []).append(full)
    return groups


def tie_group(sig: Any, full: str, groups: dict[str, list[str]] | None = None) -> list[str]:
    """Returns all names of the tensor ``full`` names (just ``[full]`` when it is not tied)."""
    groups = groups if groups is not None else tie_groups(sig)
    return list(groups.get(sig.tied.get(full, full), [full]))


def group_slots(sig: Any, slots: Iterable[tuple[str, str]],
                groups: dict[str, list[str]] | None = None) -> list[tuple[tuple[str, str], dict[str, list[str]]]]:
    """Groups selected parameter slots by tensor: one plan site per tensor.

    Args:
        sig: The model's signature.
        slots: Selected ``(module path, parameter name)`` pairs, model order.
        groups: :func:`tie_groups` of ``sig``, if the caller has it.

    Returns:
        ``((module path, name) of the site, tie fields)`` per tensor, in
        model order of the site; the fields (``shared_with``,
        ``untied_from``) are present only when non-empty.
    """
    groups = groups if groups is not None else tie_groups(sig)
    chosen: dict[str, list[tuple[str, str]]] = {}
    for path, param in slots:
        full = full_param_path(path, param)
        chosen.setdefault(sig.tied.get(full, full), []).append((path, param))
    found = []
    for first, picked in chosen.items():
        names = [full_param_path(*slot) for slot in picked]
        fields: dict[str, list[str]] = {}
        if len(names) > 1:
            fields[SHARED] = names[1:]
        left = [n for n in groups.get(first, [first]) if n not in names]
        if left:
            fields[UNTIED] = left
        found.append((picked[0], fields))
    return found


def site_slots(site: dict[str, Any]) -> list[str]:
    """Returns the parameter names a tune or sparse site acts at: its own, then ``shared_with``."""
    return [full_param_path(site["path"], site["param"]), *site.get(SHARED, [])]


def describe_tie_notes(deltas: dict[str, dict[str, Any]]) -> list[str]:
    """Returns one line per site of a tied tensor (delta name order), for the plan summary.

    Args:
        deltas: The plan's ``deltas`` section.

    Returns:
        Lines such as ``tune 'emb': one trained copy at model.embed_tokens.weight
        and lm_head.weight (tied)``; empty when no site touches a tied tensor.
    """
    lines = []
    for name, delta in sorted(deltas.items()):
        what = "one trained copy" if delta["kind"] == "tune" else "one set of sparse values"
        for site in delta["sites"]:
            if SHARED not in site and UNTIED not in site:
                continue
            names = site_slots(site)
            line = f"{delta['kind']} '{name}': {what} at {_join(names)}"
            line += " (tied)" if len(names) > 1 else ""
            if UNTIED in site:
                line += f"; unties {_join(site[UNTIED])}, which keep{'s' if len(site[UNTIED]) == 1 else ''} " \
                        "the frozen original"
            lines.append(line)
    return lines


def _join(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
