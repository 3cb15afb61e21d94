"""Task algebra: weights multiply through nesting, repeats add, frozen propagates, order kept."""

from __future__ import annotations

import pytest

from adaptlang.spec import load_spec

DELTAS = """\
adaptlang 1
lora a { on q }
lora b { on k }
ia3 c { on v }
prompt p { tokens 4 }
tune t { params lm_head }
"""


def flat(task_lines: str, name: str = "x"):
    spec = load_spec(DELTAS + task_lines)
    return [(term.delta, term.weight, term.frozen) for term in spec.tasks[name].terms]


@pytest.mark.parametrize("expr, expected", [
    ("a + b", [("a", 1.0, False), ("b", 1.0, False)]),
    ("b + a", [("b", 1.0, False), ("a", 1.0, False)]),  # written order, not declaration order
    ("0.5 * (0.5 * a + b)", [("a", 0.25, False), ("b", 0.5, False)]),
    ("a + a", [("a", 2.0, False)]),
    ("0.25 * a + b + 0.5 * a", [("a", 0.75, False), ("b", 1.0, False)]),  # first place kept
    ("frozen(0.5 * a) + c", [("a", 0.5, True), ("c", 1.0, False)]),
    ("frozen(a + frozen(b))", [("a", 1.0, True), ("b", 1.0, True)]),
    ("((a))", [("a", 1.0, False)]),
    ("w * a", [("a", 3.0, False)]),
])
def test_flattening(expr, expected):
    assert flat(f"let w = 3\ntask x = {expr}\n") == expected


def test_tasks_of_tasks():
    lines = "task s = a + c\ntask q = a + b\ntask both = 0.5 * s + 0.5 * q\ntask v2 = frozen(q) + t + p\n" \
            "task deep = 2 * both\n"
    assert flat(lines, "both") == [("a", 1.0, False), ("c", 0.5, False), ("b", 0.5, False)]
    assert flat(lines, "v2") == [("a", 1.0, True), ("b", 1.0, True), ("t", 1.0, False), ("p", 1.0, False)]
    assert flat(lines, "deep") == [("a", 2.0, False), ("c", 1.0, False), ("b", 1.0, False)]


def test_tasks_may_come_before_what_they_use():
    spec = load_spec("adaptlang 1\ntask x = y + a\ntask y = b\nlora a { on q }\nlora b { on k }\n")
    assert [t.delta for t in spec.tasks["x"].terms] == ["b", "a"]


def test_prompt_and_tune_take_weight_one_and_can_be_frozen():
    assert flat("task x = p + frozen(t) + 1 * a\n") == [("p", 1.0, False), ("t", 1.0, True), ("a", 1.0, False)]


def test_no_tasks_means_one_implicit_default():
    spec = load_spec(DELTAS)
    assert list(spec.tasks) == ["default"]
    assert spec.tasks["default"].implicit
    assert [t.delta for t in spec.tasks["default"].terms] == ["a", "b", "c", "p", "t"]
