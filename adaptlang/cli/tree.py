"""The module tree and roles table of ``adaptc inspect``, built from a model signature.

Works on :class:`~adaptlang.plan.signature.ModelSignature` values only (no
tensors). List-like modules whose consecutive children have the same
structure are collapsed into one node, ``layers[0..31] × 32
LlamaDecoderLayer``, that shows the first child's subtree.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from adaptlang.cli.output import format_count, plain
from adaptlang.errors import escape_controls

__all__ = ["build_tree", "compress_paths", "group_runs", "roles_by_path", "roles_table"]

_DIGITS = re.compile(r"\d+\Z")


def child_path(parent: str, name: str) -> str:
    """Joins a module path and a child name (the root's path is ``""``)."""
    return f"{parent}.{name}" if parent else name


def roles_by_path(sig: Any) -> dict[str, list[str]]:
    """Inverts ``sig.roles``: module path to the roles naming it, in role order."""
    out: dict[str, list[str]] = {}
    for role, paths in sig.roles.items():
        for path in paths:
            out.setdefault(path, []).append(role)
    return out


class TreeBuilder:
    """Builds a rich ``Tree`` of a signature's modules, collapsing repeated children.

    Args:
        sig: The model signature.
        depth: Levels below the root to show; None for all.
    """

    def __init__(self, sig: Any, depth: Optional[int] = None):
        self.sig = sig
        self.depth = depth
        self.roles = roles_by_path(sig)
        self._keys: dict[str, tuple] = {}
        self._totals: dict[str, int] = {}

    def structure_key(self, path: str) -> tuple:
        """Returns a hashable description of a subtree: classes, parameter shapes, child names."""
        if path not in self._keys:
            info = self.sig.modules[path]
            params = tuple((p.name, tuple(p.shape), p.dtype) for p in info.params)
            kids = tuple((name, self.structure_key(child_path(path, name))) for name in self.children(path))
            self._keys[path] = (info.cls, params, kids)
        return self._keys[path]

    def children(self, path: str) -> list[str]:
        """Returns the child names of ``path`` that the signature knows."""
        info = self.sig.modules[path]
        return [name for name in info.children if child_path(path, name) in self.sig.modules]

    def total_params(self, path: str) -> int:
        """Returns the parameter count of a subtree (direct parameters plus children's)."""
        if path not in self._totals:
            info = self.sig.modules[path]
            own = sum(numel(p.shape) for p in info.params)
            self._totals[path] = own + sum(self.total_params(child_path(path, n)) for n in self.children(path))
        return self._totals[path]

    def label(self, name: str, path: str, count: int = 1) -> Text:
        """Formats one node: name, class, features, own parameter shapes, roles, size."""
        info = self.sig.modules[path]
        text = Text()
        text.append(escape_controls(name), style="bold")
        text.append(f" × {count} {info.cls}" if count > 1 else f"  {info.cls}", style="cyan")
        if info.in_features is not None and info.out_features is not None:
            text.append(f"  {info.in_features}→{info.out_features}")
        for param in info.params:
            text.append(f"  {param.name} {shape_text(param.shape)}", style="dim")
        roles = self.roles.get(path, [])
        if roles:
            text.append("  " + " ".join(f"@{r}" for r in roles), style="magenta")
        total = self.total_params(path)
        if total and self.children(path):
            text.append(f"  {format_count(total * count)} params", style="green")
        return text

    def build(self) -> Tree:
        """Returns the whole tree, rooted at the model."""
        root = self.sig.modules[""]
        title = Text()
        title.append(escape_controls(str(self.sig.name)), style="bold")
        title.append(f"  {root.cls}", style="cyan")
        title.append(f"  family {self.sig.family}")
        title.append(f"  {format_count(self.sig.total_params)} params", style="green")
        title.append(f"  fingerprint {str(self.sig.fingerprint)[:12]}", style="dim")
        tree = Tree(title)
        self.add_children(tree, "", 1)
        return tree

    def add_children(self, node: Tree, path: str, level: int) -> None:
        """Adds ``path``'s children under ``node``, collapsing runs in list-like modules."""
        names = self.children(path)
        if not names:
            return
        if self.depth is not None and level > self.depth:
            node.add(Text(f"… {len(names)} more", style="dim"))
            return
        for name in names:
            sub = child_path(path, name)
            info = self.sig.modules[sub]
            if info.is_list and self.children(sub):
                self.add_list(node, name, sub, level)
            else:
                self.add_children(node.add(self.label(name, sub)), sub, level + 1)

    def add_list(self, node: Tree, name: str, path: str, level: int) -> None:
        """Adds a list-like module: one node per run of structurally identical children."""
        names = self.children(path)
        runs = group_runs(names, [self.structure_key(child_path(path, n)) for n in names])
        if len(runs) == 1 and len(runs[0]) > 1:
            first = runs[0][0]
            sub = child_path(path, first)
            label = self.label(f"{name}[{first}..{runs[0][-1]}]", sub, count=len(runs[0]))
            if self.roles.get(path):  # the list's own roles (@layers): the label shows the child's
                label.append("  " + " ".join(f"@{r}" for r in self.roles[path]), style="magenta")
            self.add_children(node.add(label), sub, level + 1)
            return
        list_node = node.add(self.label(name, path))
        if self.depth is not None and level + 1 > self.depth:
            list_node.add(Text(f"… {len(names)} more", style="dim"))
            return
        for run in runs:
            sub = child_path(path, run[0])
            tag = f"[{run[0]}..{run[-1]}]" if len(run) > 1 else f"[{run[0]}]"
            self.add_children(list_node.add(self.label(tag, sub, count=len(run))), sub, level + 2)


def group_runs(names: list[str], keys: list[Any]) -> list[list[str]]:
    """Splits ``names`` into runs of consecutive items with equal ``keys``."""
    runs: list[list[str]] = []
    last: Any = object()
    for name, key in zip(names, keys):
        if runs and key == last:
            runs[-1].append(name)
        else:
            runs.append([name])
        last = key
    return runs


def build_tree(sig: Any, depth: Optional[int] = None) -> Tree:
    """Returns the collapsed module tree of ``sig`` (``depth`` levels; None for all)."""
    return TreeBuilder(sig, depth).build()


def numel(shape: Iterable[int]) -> int:
    """Returns the number of elements of a tensor shape."""
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def shape_text(shape: Iterable[int]) -> str:
    """Formats a shape as ``4096×4096`` (``scalar`` for ``()``)."""
    dims = [str(int(d)) for d in shape]
    return "×".join(dims) if dims else "scalar"


def compress_paths(paths: list[str]) -> list[str]:
    """Writes paths that differ in one index as ranges: ``layers[0..31].mlp``.

    Args:
        paths: Module paths, in model order.

    Returns:
        Compact patterns, in order of first appearance.
    """
    groups: dict[tuple, list[list[str]]] = {}
    for path in paths:
        segs = path.split(".")
        key = tuple("#" if _DIGITS.match(s) else s for s in segs)
        groups.setdefault(key, []).append(segs)
    out = []
    for key, members in groups.items():
        varying = [i for i, k in enumerate(key) if k == "#" and len({m[i] for m in members}) > 1]
        if len(members) == 1 or len(varying) != 1:
            out.extend(".".join(m) for m in members)
            continue
        pos = varying[0]
        numbers = sorted({int(m[pos]) for m in members})
        segs = list(members[0])
        segs[pos] = f"[{ranges_text(numbers)}]"
        text = ".".join(segs)
        out.append(text.replace(".[", "["))
    return out


def ranges_text(numbers: list[int]) -> str:
    """Formats sorted integers as ``0..7, 9, 12..15``."""
    parts: list[str] = []
    start = prev = None
    for n in numbers + [None]:  # type: ignore[list-item]
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            parts.append(str(start) if start == prev else f"{start}..{prev}")
            start = prev = n
    return ", ".join(parts)


def roles_table(sig: Any) -> Table:
    """One row per role: how many modules it names, and which (compactly)."""
    table = Table(title=plain(f"roles of {sig.name} ({sig.family})"), title_justify="left",
                  title_style="bold")
    table.add_column("role", style="magenta", no_wrap=True)
    table.add_column("modules", justify="right")
    table.add_column("paths")
    table.add_column("class", style="cyan")
    for role, paths in sig.roles.items():
        classes = sorted({sig.modules[p].cls for p in paths if p in sig.modules})
        table.add_row(f"@{role}", str(len(paths)), plain("\n".join(compress_paths(list(paths)))),
                      plain(", ".join(classes)))
    return table
