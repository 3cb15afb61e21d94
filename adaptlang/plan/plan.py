"""The compiled plan: what every delta adds where, per task, with exact counts.

A :class:`Plan` is immutable data in the JSON contract of ``docs/design.md``
(``to_json`` writes it, ``from_json`` reads it back byte for byte), plus a
graph view of it built on first use: nodes for the model, the sites (modules),
the deltas, the ops (a delta acting at a site), the tasks and the quantized
weights; edges ``delta -> op -> site``, ``task -> delta`` (weight, frozen) and
``op -> op`` ordering edges between a task's ops at one site, in the task's
written order (the order its adapters run in).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

import networkx as nx

from adaptlang.errors import Diagnostic, UsageError, did_you_mean
from adaptlang.plan.schema import find_plan_inconsistencies, find_schema_errors
from adaptlang.plan.ties import describe_tie_notes

__all__ = ["Plan", "compute_plan_sha256", "format_term", "FORMAT_VERSION"]

#: Version of the plan JSON layout (``"format"``).
FORMAT_VERSION = 1


def compute_plan_sha256(data: dict[str, Any]) -> str:
    """Returns the plan's identity: the sha256 of its canonical JSON without ``plan_sha256`` and ``model.name``.

    Canonical JSON: sorted keys, no whitespace, ASCII only, so the hash does
    not depend on how the plan file was indented. The model's ``name`` is how
    the user referred to the model (``BertModel`` from Python, a folder or a
    ``pkg.mod:factory`` from the CLI): a label for people, kept in the JSON
    but not hashed, so one spec bound to one model structure (class, family,
    fingerprint, parameters, dtype) has one ``plan_sha256`` however it was
    compiled.
    """
    body = {k: v for k, v in data.items() if k != "plan_sha256"}
    if isinstance(body.get("model"), dict):
        body["model"] = {k: v for k, v in body["model"].items() if k != "name"}
    return _sha256_of(body)


def _sha256_of(body: dict[str, Any]) -> str:
    """The sha256 of ``body``'s canonical JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _legacy_plan_sha256(data: dict[str, Any]) -> str:
    """The hash adaptlang 0.1 plans were written with (``model.name`` included), to keep reading them."""
    return _sha256_of({k: v for k, v in data.items() if k != "plan_sha256"})


def _site_key(site: dict[str, Any]) -> str:
    """Returns a site's key within its delta: the path, with ``:param`` for parameters."""
    return f"{site['path']}:{site['param']}" if "param" in site else site["path"]


def _plan_error(message: str, notes: tuple[str, ...] = ()) -> UsageError:
    """Returns the error for plan JSON that cannot be read."""
    return UsageError(Diagnostic(message, obj="plan JSON", notes=notes,
                                 hint="recompile the spec to get a fresh plan"))


class Plan:
    """A spec bound to one model: deltas with their sites, tasks, base transforms.

    Build one with :func:`adaptlang.plan.compiler.compile_plan` or
    :meth:`from_json`; the data never changes after construction. Two plans
    are equal when their ``sha256`` is.

    Args:
        data: The plan dict of the JSON contract; ``plan_sha256`` is computed
            (any value given is ignored).
    """

    def __init__(self, data: dict[str, Any]):
        body = {k: v for k, v in data.items() if k != "plan_sha256"}
        self._sha = compute_plan_sha256(body)
        self._data = {**body, "plan_sha256": self._sha}

    # ------------------------------------------------------------------
    # Serialization.

    @property
    def sha256(self) -> str:
        """The plan's identity: sha256 of its canonical JSON (``plan_sha256``)."""
        return self._sha

    def to_dict(self) -> dict[str, Any]:
        """Returns the plan JSON as a fresh dict (the caller may change it)."""
        return json.loads(json.dumps(self._data))

    def to_json(self) -> str:
        """Returns the plan JSON: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self._data, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text_or_dict: str | bytes | dict[str, Any]) -> "Plan":
        """Reads a plan written by :meth:`to_json` and checks it.

        Args:
            text_or_dict: The JSON text, or the parsed dict.

        Returns:
            The plan; ``to_json()`` gives back the same bytes. (A plan written
            before ``model.name`` left the hash, whose ``plan_sha256`` covers
            the name, is accepted and carries its current ``plan_sha256``.)

        Raises:
            UsageError: Not JSON, not a plan of this format, inconsistent
                counts, or a ``plan_sha256`` that does not match its content.
        """
        data = text_or_dict
        if not isinstance(data, dict):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise _plan_error(f"not valid JSON: {exc}") from None
        problems = find_schema_errors(data)
        if problems:
            raise _plan_error("not a valid adaptlang plan", tuple(problems[:10]))
        problems = find_plan_inconsistencies(data)
        if problems:
            raise _plan_error("the plan's numbers do not add up", tuple(problems[:10]))
        if data["plan_sha256"] not in (compute_plan_sha256(data), _legacy_plan_sha256(data)):
            raise _plan_error("plan_sha256 does not match the plan's content (was it edited?)")
        return cls(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other._sha == self._sha

    def __hash__(self) -> int:
        return hash(self._sha)

    def __repr__(self) -> str:
        return (f"Plan(model={self._data['model']['name']!r}, deltas={list(self.deltas)}, "
                f"tasks={list(self.tasks)}, sha256={self._sha[:12]!r})")

    # ------------------------------------------------------------------
    # Accessors.

    @property
    def model(self) -> dict[str, Any]:
        """The model section: name, class, family, fingerprint, parameters, dtype."""
        return dict(self._data["model"])

    @property
    def deltas(self) -> tuple[str, ...]:
        """Delta names, sorted (the JSON order)."""
        return tuple(sorted(self._data["deltas"]))

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names, sorted (the JSON order)."""
        return tuple(sorted(self._data["tasks"]))

    @property
    def quantize(self) -> list[dict[str, Any]]:
        """The base's quantized weights, in model order (copies)."""
        return [dict(site) for site in self._data["base"]["quantize"]]

    def delta(self, name: str) -> dict[str, Any]:
        """Returns one delta's section (kind, params, site_count, sites) as a copy."""
        return json.loads(json.dumps(self._lookup("deltas", name)))

    def task(self, name: str) -> dict[str, Any]:
        """Returns one task's section (deltas, counts, memory) as a copy."""
        return json.loads(json.dumps(self._lookup("tasks", name)))

    def sites_of(self, delta: str) -> list[dict[str, Any]]:
        """Returns a delta's sites in model order (copies)."""
        return [dict(site) for site in self._lookup("deltas", delta)["sites"]]

    def ops_at(self, path: str, task: str) -> list[dict[str, Any]]:
        """Lists what a task does at one module, in the order it runs.

        Args:
            path: A module path (parameter sites count at their module).
            task: A task name.

        Returns:
            One dict per op: ``delta``, ``kind``, ``weight``, ``frozen`` and
            the ``site`` dict; in the task's written order (adapters at one
            site run in this order, LoRA contributions add up).
        """
        terms = self._lookup("tasks", task)["deltas"]
        graph = self._graph
        node = f"site:{path}"
        if node not in graph:
            return []
        ops_by_delta: dict[str, list[str]] = {}
        for op in graph.predecessors(node):
            if graph.nodes[op]["kind"] == "op":
                ops_by_delta.setdefault(graph.nodes[op]["delta"], []).append(op)
        found = []
        for term in terms:
            for op in sorted(ops_by_delta.get(term["name"], [])):
                attrs = graph.nodes[op]
                found.append({"delta": term["name"], "kind": attrs["delta_kind"],
                              "weight": term["weight"], "frozen": term["frozen"],
                              "site": dict(attrs["site"])})
        return found

    def _lookup(self, section: str, name: str) -> dict[str, Any]:
        """Returns ``self._data[section][name]`` or raises UsageError with a suggestion."""
        items = self._data[section]
        if name not in items:
            singular = section[:-1]
            raise UsageError(Diagnostic(
                f"the plan has no {singular} '{name}'", obj=name,
                hint=did_you_mean(name, items),
                notes=(f"{section}: {', '.join(sorted(items)) or '(none)'}",)))
        return items[name]

    # ------------------------------------------------------------------
    # The graph view.

    @cached_property
    def _graph(self) -> nx.DiGraph:
        """Builds the graph once, on first use (compiling never needs it)."""
        return _build_graph(self._data)

    def graph_summary(self) -> dict[str, int]:
        """Counts the graph's nodes by kind, and its edges (for tests and debugging)."""
        counts: dict[str, int] = {}
        for _, kind in self._graph.nodes(data="kind"):
            counts[kind] = counts.get(kind, 0) + 1
        counts["edges"] = self._graph.number_of_edges()
        return counts

    def to_dot(self) -> str:
        """Returns the graph in graphviz DOT, nodes and edges sorted (deterministic)."""
        return _render_dot(self._graph)

    def summary(self) -> str:
        """Returns a plain-text report: the model, then per delta and per task counts."""
        return _render_summary(self._data)


def _build_graph(data: dict[str, Any]) -> nx.DiGraph:
    """Builds the plan graph from plan data (see the module docstring)."""
    graph = nx.DiGraph()
    model = data["model"]
    graph.add_node("model", kind="model", label=f"{model['name']}\n{model['cls']}")

    def add_site(path: str, module: str | None) -> str:
        node = f"site:{path}"
        if node not in graph:
            graph.add_node(node, kind="site", path=path, module=module)
            graph.add_edge("model", node, kind="contains")
        return node

    for name in sorted(data["deltas"]):
        delta = data["deltas"][name]
        dnode = f"delta:{name}"
        graph.add_node(dnode, kind="delta", delta_kind=delta["kind"], params=delta["params"])
        for site in delta["sites"]:
            op = f"op:{name}@{_site_key(site)}"
            graph.add_node(op, kind="op", delta=name, delta_kind=delta["kind"], site=site)
            graph.add_edge(dnode, op, kind="has")
            graph.add_edge(op, add_site(site["path"], site.get("module")), kind="acts_on")
    for site in data["base"]["quantize"]:
        qnode = f"quantize:{site['path']}"
        graph.add_node(qnode, kind="quantize", format=site["format"])
        graph.add_edge(qnode, add_site(site["path"], site["module"]), kind="transforms")
    for name in sorted(data["tasks"]):
        _add_task(graph, data, name)
    return graph


def _add_task(graph: nx.DiGraph, data: dict[str, Any], name: str) -> None:
    """Adds a task node, its ``task -> delta`` edges and its op ordering edges."""
    tnode = f"task:{name}"
    graph.add_node(tnode, kind="task")
    last_at: dict[str, str] = {}  # site node -> the task's previous op there
    for order, term in enumerate(data["tasks"][name]["deltas"]):
        graph.add_edge(tnode, f"delta:{term['name']}", kind="uses", order=order,
                       weight=term["weight"], frozen=term["frozen"])
        for site in data["deltas"][term["name"]]["sites"]:
            op = f"op:{term['name']}@{_site_key(site)}"
            snode = f"site:{site['path']}"
            prev = last_at.get(snode)
            if prev is not None and prev != op:
                if graph.has_edge(prev, op):
                    graph.edges[prev, op]["tasks"].append(name)
                else:
                    graph.add_edge(prev, op, kind="then", tasks=[name])
            last_at[snode] = op


# ----------------------------------------------------------------------
# Rendering.


def _format_share(count: int, total: int) -> str:
    """Formats ``count`` as a percentage of ``total`` with three significant digits."""
    return f"{100.0 * count / total:.3g}%" if total else "-"


def _format_bytes(count: int) -> str:
    """Formats a byte count in binary units (``12.6 GiB``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lays out rows in columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _render_summary(data: dict[str, Any]) -> str:
    """Writes the plan as plain-text tables (see :meth:`Plan.summary`)."""
    model = data["model"]
    total = model["params"]
    lines = [f"model  {model['name']} ({model['cls']}, {model['family']}): "
             f"{total:,} parameters, {model['dtype']}",
             f"       fingerprint {model['fingerprint'][:16]}",
             f"plan   sha256 {data['plan_sha256'][:16]}", ""]
    rows = [[name, d["kind"], str(d["site_count"]), f"{d['params']:,}", _format_share(d["params"], total)]
            for name, d in sorted(data["deltas"].items())]
    lines += _format_table(["delta", "kind", "sites", "parameters", "of model"], rows)
    ties = describe_tie_notes(data["deltas"])
    if ties:  # re-trained tied tensors: which names share the delta, which it unties
        lines += [""] + [f"tied   {line}" for line in ties]
    quantized = data["base"]["quantize"]
    if quantized:
        before = sum(site["bytes_before"] for site in quantized)
        after = sum(site["bytes_after"] for site in quantized)
        formats = ", ".join(sorted({site["format"] for site in quantized}))
        lines += ["", f"quantize  {formats}: {len(quantized)} weights, "
                      f"{_format_bytes(before)} -> {_format_bytes(after)}"]
    rows = []
    for name, task in sorted(data["tasks"].items()):
        terms = " + ".join(format_term(t) for t in task["deltas"])
        rows.append([name, terms, f"{task['trainable_params']:,}", f"{task['bundle_params']:,}",
                     _format_share(task["trainable_params"], total),
                     _format_bytes(task["memory"]["total_bytes"])])
    lines += [""] + _format_table(["task", "deltas", "trainable", "bundle", "of model", "train memory"], rows)
    return "\n".join(lines) + "\n"


def format_term(term: dict[str, Any]) -> str:
    """Writes a task term back as task-expression text: ``0.5 * attn``, ``frozen(head)``."""
    text = term["name"] if term["weight"] == 1.0 else f"{term['weight']:g} * {term['name']}"
    return f"frozen({text})" if term["frozen"] else text


_DOT_SHAPES = {"model": "house", "site": "box", "delta": "ellipse", "op": "point",
               "task": "doubleoctagon", "quantize": "diamond"}


def _quote(text: str) -> str:
    """Quotes a DOT identifier or label."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _render_dot(graph: nx.DiGraph) -> str:
    """Writes the graph as DOT, sorted so equal plans give equal text."""
    lines = ["digraph plan {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for node in sorted(graph.nodes):
        attrs = graph.nodes[node]
        kind = attrs["kind"]
        label = attrs.get("label") or node.split(":", 1)[-1]
        if kind == "delta":
            label = f"{label}\n{attrs['delta_kind']} {attrs['params']:,}"
        lines.append(f"  {_quote(node)} [shape={_DOT_SHAPES[kind]}, label={_quote(label)}];")
    for src, dst in sorted(graph.edges):
        attrs = graph.edges[src, dst]
        extra = ""
        if attrs["kind"] == "uses":
            label = f"{attrs['weight']:g}" + (" frozen" if attrs["frozen"] else "")
            extra = f", label={_quote(label)}"
        elif attrs["kind"] == "then":
            extra = f", style=dashed, label={_quote(','.join(attrs['tasks']))}"
        lines.append(f"  {_quote(src)} -> {_quote(dst)} [kind={attrs['kind']}{extra}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
