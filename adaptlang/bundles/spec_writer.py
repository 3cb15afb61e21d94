"""Writing ``.adapt`` text for known module paths: compact, exact selectors and delta blocks.

Used by ``import-peft``: a PEFT adapter names its modules by full path, and
the spec we write must select exactly those. :func:`paths_selector` turns a
set of paths into anchored selectors, merging paths that differ only in list
indices (``layers[0, 1, 2]``) or in names (``{q_proj, v_proj}``) when the
product of the alternatives is exactly the set, so a Llama adapter on every
layer's q and v projections reads ``/model.layers[0, 1].self_attn.{q_proj, v_proj}``.
"""

from __future__ import annotations

import re
from math import prod
from typing import Iterable

from adaptlang.errors import BundleError, Diagnostic

__all__ = ["paths_selector", "render_block"]

_SEGMENT = re.compile(r"[A-Za-z0-9_]+\Z")

Pattern = tuple[frozenset[str], ...]


def _products(paths: set[tuple[str, ...]]) -> list[Pattern]:
    """Covers same-length paths with product patterns, each exactly inside the set."""
    width = len(next(iter(paths)))
    sets = tuple(frozenset(p[i] for p in paths) for i in range(width))
    if prod(len(s) for s in sets) == len(paths):
        return [sets]
    # Split on the first position where paths differ, solve each part, then merge patterns
    # that differ in one position only (q_proj and v_proj under the same layers).
    pos = next(i for i, s in enumerate(sets) if len(s) > 1)
    found: list[Pattern] = []
    for value in sorted(sets[pos]):
        found += _products({p for p in paths if p[pos] == value})
    return _merge(found)


def _merge(patterns: list[Pattern]) -> list[Pattern]:
    """Unites patterns that are equal except at one position (the union is then still exact)."""
    merged = True
    while merged:
        merged = False
        for i in range(len(patterns)):
            for j in range(i + 1, len(patterns)):
                a, b = patterns[i], patterns[j]
                diff = [k for k in range(len(a)) if a[k] != b[k]]
                if len(diff) == 1:
                    k = diff[0]
                    patterns[i] = a[:k] + (a[k] | b[k],) + a[k + 1:]
                    del patterns[j]
                    merged = True
                    break
            if merged:
                break
    return patterns


def _render(pattern: Pattern) -> str:
    """Writes one product pattern as an anchored selector path."""
    out = "/"
    for i, values in enumerate(pattern):
        numeric = all(v.isdigit() for v in values)
        if numeric and i > 0:
            out += "[" + ", ".join(sorted(values, key=int)) + "]"
            continue
        if i > 0:
            out += "."
        names = sorted(values)
        out += names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"
    return out


def paths_selector(paths: Iterable[str]) -> str:
    """Returns a selector matching exactly these module paths (anchored at the root).

    Raises:
        BundleError: A path segment that a selector cannot spell.
    """
    split = sorted({tuple(p.split(".")) for p in paths})
    for parts in split:
        bad = [s for s in parts if not _SEGMENT.match(s)]
        if bad or parts[0].isdigit():
            raise BundleError(Diagnostic(f"module path '{'.'.join(parts)}' cannot be written as a selector",
                                         obj=".".join(parts)))
    by_length: dict[int, set[tuple[str, ...]]] = {}
    for parts in split:
        by_length.setdefault(len(parts), set()).add(parts)
    patterns = [pat for length in sorted(by_length) for pat in _products(by_length[length])]
    return ", ".join(sorted(_render(p) for p in patterns))


def render_block(kind: str, name: str, lines: list[tuple[str, str]]) -> str:
    """Writes a delta block: ``kind name {`` then ``key value`` lines (formatting is left to ``fmt``)."""
    body = "".join(f"    {key} {value}\n" for key, value in lines)
    return f"{kind} {name} {{\n{body}}}\n"
