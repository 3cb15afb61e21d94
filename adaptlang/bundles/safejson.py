"""Reading JSON from a stranger's file: bounded nesting, finite numbers, errors naming the place.

Python's ``json`` module recurses once per nested array or object and fails
near a depth of 1,000 with a ``RecursionError``; it also reads ``NaN``,
``Infinity`` and ``1e400`` (as ``inf``) without complaint. Bundle headers,
manifests and PEFT ``adapter_config.json`` files are read through
:func:`parse_json`, which turns all of these into a
:class:`~adaptlang.errors.BundleError` naming the file, the limit
(:data:`~adaptlang.limits.BUNDLE_MAX_JSON_DEPTH`) or the field
(``task_plan.deltas.attn.sites[0].alpha``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from adaptlang.errors import BundleError, Diagnostic
from adaptlang.limits import BUNDLE_MAX_JSON_DEPTH

__all__ = ["error_field", "field_path", "first_error", "find_json_problem", "parse_json"]


def field_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """Joins a location (``("sites", 0, "alpha")``) as ``sites[0].alpha``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


#: What pydantic puts in an error's location for the member of a union it tried (not a JSON key).
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def _kept(loc: tuple[Any, ...]) -> list[Any]:
    return [part for i, part in enumerate(loc)
            if i == 0 or not isinstance(part, str) or (part not in _UNION_TAGS and "[" not in part)]


def error_field(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path, without union member tags (``('t', 'list[str]', 0)``)."""
    return field_path(_kept(loc))


def first_error(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """The first pydantic error as ``(field path, message)``.

    A field of a union type gets one error per member tried, in no fixed
    order; the deepest location among the first field's errors says most
    (``target_modules[0]`` rather than ``target_modules``).
    """
    top = errors[0]["loc"][:1]
    same = [e for e in errors if e["loc"][:1] == top]
    best = max(same, key=lambda e: len(_kept(e["loc"])))  # max() keeps the first of equals
    return error_field(best["loc"]), best["msg"]


def find_json_problem(value: Any, max_depth: int = BUNDLE_MAX_JSON_DEPTH) -> str | None:
    """Returns the first nesting or non-finite number problem of parsed JSON, or None.

    Walks with an explicit stack (no recursion), so any depth is safe to check.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if len(where) > max_depth:
            return (f"{field_path(where[:max_depth])}: nested deeper than {max_depth} levels "
                    f"(limit BUNDLE_MAX_JSON_DEPTH = {max_depth})")
        if isinstance(item, float) and not math.isfinite(item):
            return f"{field_path(where)}: {item} is not a finite number"
        if isinstance(item, dict):
            stack.extend((v, (*where, k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(item))))
    return None


def parse_json(text: str | bytes, where: str, what: str, max_depth: int = BUNDLE_MAX_JSON_DEPTH) -> Any:
    """Parses JSON text from a file, refusing deep nesting and non-finite numbers.

    Args:
        text: The JSON text.
        where: The file, for errors.
        what: What the text is ("the adaptlang manifest", "adapter_config.json"), for errors.
        max_depth: The nesting limit.

    Raises:
        BundleError: Not JSON, nested deeper than ``max_depth``, or holding
            ``NaN``/``Infinity``/an overflowing number; naming ``where`` and the field.
    """
    limit = f"limit BUNDLE_MAX_JSON_DEPTH = {max_depth}"
    try:
        data = json.loads(text)
    except RecursionError:
        raise BundleError(Diagnostic(f"{what} is nested deeper than {max_depth} levels ({limit})", obj=where,
                                     hint="the file is corrupt or was made to break readers")) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(Diagnostic(f"{what} is not valid JSON: {exc}", obj=where)) from None
    problem = find_json_problem(data, max_depth)
    if problem is not None:
        raise BundleError(Diagnostic(f"{what}: field {problem}", obj=where,
                                     hint="the file is corrupt or was edited; use an intact copy"))
    return data
