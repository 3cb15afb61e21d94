"""The JSON Schema (draft 2020-12) of the plan JSON, and a small validator for it.

:func:`plan_json_schema` is the published contract of ``Plan.to_json()``
(``adaptc schema`` prints it). ``jsonschema`` is only a test dependency, so
:func:`find_schema_errors` interprets the subset of the vocabulary this schema
uses (``type``, ``const``, ``enum``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``minimum``, ``maximum``, ``pattern``,
``oneOf``, ``$ref``); the tests check both agree on compiled plans.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["find_plan_inconsistencies", "find_schema_errors", "plan_json_schema", "SCHEMA_ID"]

SCHEMA_ID = "https://adaptlang.dev/schemas/plan-1.json"

_INT = {"type": "integer", "minimum": 0}
_POS = {"type": "integer", "minimum": 1}
_STR = {"type": "string"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_SHAPE = {"type": "array", "items": _INT}


def _record(props: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Returns a closed object schema: every property required except ``optional``."""
    return {
        "type": "object",
        "properties": props,
        "required": sorted(k for k in props if k not in optional),
        "additionalProperties": False,
    }


def _module_site(**extra: Any) -> dict[str, Any]:
    """Returns the schema of a site on a module with known widths."""
    return _record({"path": _STR, "module": _STR, "in_features": _INT, "out_features": _INT,
                    "params": _INT, **extra})


def _site_schemas() -> dict[str, dict[str, Any]]:
    """Returns the site schema of each delta kind."""
    # shared_with / untied_from: the other names of a tied tensor (adaptlang.plan.ties); only on such sites.
    names = {"type": "array", "items": _STR}
    param_site = {"path": _STR, "param": _STR, "shape": _SHAPE, "params": _INT,
                  "shared_with": names, "untied_from": names}
    tie_fields = ("shared_with", "untied_from")
    return {
        "lora": _module_site(
            rank=_POS, alpha=_NUM, dropout=_FRACTION,
            init={"enum": ["kaiming", "gaussian", "zeros"]},
            variant={"enum": ["lora", "dora", "rslora"]}, bias=_BOOL),
        "ia3": _module_site(init={"enum": ["ones"]}, feedforward=_BOOL),
        "adapter": _record({
            "path": _STR, "module": _STR, "placement": {"enum": ["after", "before", "parallel"]},
            "dim": _POS, "size": _POS, "act": {"enum": ["relu", "gelu", "silu", "tanh"]},
            "dropout": _FRACTION, "scale": _NUM, "residual": _BOOL, "params": _INT}),
        "prompt": _record({
            "path": _STR, "module": _STR, "tokens": _POS, "dim": _POS,
            "init": {"enum": ["text", "vocab", "random"]}, "text": _STR, "params": _INT},
            optional=("text",)),
        "tune": _record({**param_site, "dtype": _STR}, optional=tie_fields),
        "sparse": _record({
            **param_site, "density": _FRACTION, "k": _POS,
            "select": {"enum": ["magnitude", "random"]}, "seed": _INT}, optional=tie_fields),
    }


def _delta_schema(kind: str) -> dict[str, Any]:
    """Returns the schema of one delta of ``kind``."""
    return _record({
        "kind": {"const": kind},
        "params": _INT,
        "site_count": _INT,
        "sites": {"type": "array", "items": {"$ref": f"#/$defs/{kind}_site"}},
    })


def plan_json_schema() -> dict[str, Any]:
    """Returns the JSON Schema (draft 2020-12) of ``Plan.to_json()``.

    Returns:
        A fresh dict; callers may change it.
    """
    sites = _site_schemas()
    defs: dict[str, Any] = {f"{kind}_site": schema for kind, schema in sites.items()}
    defs.update({f"{kind}_delta": _delta_schema(kind) for kind in sites})
    defs["quantize_site"] = _record({
        "path": _STR, "module": _STR, "param": _STR, "shape": _SHAPE,
        "format": {"enum": ["nf4", "int8"]}, "block": _POS, "double": _BOOL,
        "compute": {"enum": ["float32", "bfloat16"]}, "bytes_before": _INT, "bytes_after": _INT})
    defs["memory"] = _record({k: _INT for k in (
        "frozen_bytes", "trainable_bytes", "gradient_bytes", "optimizer_bytes", "total_bytes")})
    defs["task"] = _record({
        "deltas": {"type": "array", "items": _record(
            {"name": _STR, "weight": _NUM, "frozen": _BOOL})},
        "trainable_params": _INT, "bundle_params": _INT, "memory": {"$ref": "#/$defs/memory"}})
    schema = _record({
        "adaptlang": {"const": 1},
        "format": {"const": 1},
        "model": _record({"name": _STR, "cls": _STR, "family": _STR,
                          "fingerprint": _STR,
                          "params": _INT, "dtype": _STR}),
        "deltas": {"type": "object", "additionalProperties": {
            "oneOf": [{"$ref": f"#/$defs/{kind}_delta"} for kind in sites]}},
        "base": _record({"quantize": {"type": "array", "items": {"$ref": "#/$defs/quantize_site"}}}),
        "tasks": {"type": "object", "additionalProperties": {"$ref": "#/$defs/task"}},
        "plan_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "adaptlang plan",
        **schema,
        "$defs": defs,
    }


_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool,
}


def _has_type(value: Any, name: str) -> bool:
    """Checks a JSON type; booleans are not numbers, as in JSON Schema."""
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str,
           errors: list[str]) -> None:
    """Appends to ``errors`` every way ``value`` breaks ``schema`` (the subset above)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        _check(value, root["$defs"][name], root, where, errors)
        return
    if "type" in schema and not _has_type(value, schema["type"]):
        errors.append(f"{where}: expected {schema['type']}, got {type(value).__name__}")
        return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above {schema['maximum']}")
    if "oneOf" in schema:
        passing = [s for s in schema["oneOf"] if not _collect(value, s, root, where)]
        if len(passing) != 1:
            errors.append(f"{where}: matches {len(passing)} of the allowed forms, not exactly one")
    if isinstance(value, dict):
        _check_object(value, schema, root, where, errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{i}]", errors)


def _check_object(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any],
                  where: str, errors: list[str]) -> None:
    """Checks ``required``, ``properties`` and ``additionalProperties``."""
    props = schema.get("properties", {})
    errors.extend(f"{where}: missing '{k}'" for k in schema.get("required", []) if k not in value)
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            _check(item, props[key], root, f"{where}.{key}", errors)
        elif extra is False:
            errors.append(f"{where}: unexpected '{key}'")
        elif isinstance(extra, dict):
            _check(item, extra, root, f"{where}.{key}", errors)


def _collect(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> list[str]:
    """Returns the errors of ``value`` against ``schema`` as a fresh list."""
    errors: list[str] = []
    _check(value, schema, root, where, errors)
    return errors


def find_schema_errors(data: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Validates plan data against the plan schema.

    Args:
        data: Parsed plan JSON.
        schema: Defaults to :func:`plan_json_schema`.

    Returns:
        One line per problem (``$.deltas.attn.sites[0]: missing 'rank'``);
        empty when valid.
    """
    schema = schema if schema is not None else plan_json_schema()
    return _collect(data, schema, schema, "$")


def find_plan_inconsistencies(data: dict[str, Any]) -> list[str]:
    """Checks what a schema cannot: sums, site counts, task references.

    Args:
        data: Plan data that passed :func:`find_schema_errors`.

    Returns:
        One line per problem; empty when the numbers add up.
    """
    problems = []
    for name, delta in data["deltas"].items():
        if delta["site_count"] != len(delta["sites"]):
            problems.append(f"delta '{name}': site_count {delta['site_count']} but {len(delta['sites'])} sites")
        total = sum(site["params"] for site in delta["sites"])
        if delta["params"] != total:
            problems.append(f"delta '{name}': params {delta['params']} but its sites add up to {total}")
    for name, task in data["tasks"].items():
        missing = [t["name"] for t in task["deltas"] if t["name"] not in data["deltas"]]
        if missing:
            problems.append(f"task '{name}': unknown deltas {missing}")
            continue
        bundle = sum(data["deltas"][t["name"]]["params"] for t in task["deltas"])
        trainable = sum(data["deltas"][t["name"]]["params"] for t in task["deltas"] if not t["frozen"])
        if (task["bundle_params"], task["trainable_params"]) != (bundle, trainable):
            problems.append(f"task '{name}': parameter counts do not match its deltas")
    return problems
