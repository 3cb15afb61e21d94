"""Hostile numbers: values past the language's ranges end in a located SpecError (exit 1) at check time.

Issue 10, section 4: ``rank 1e400`` and big ``let`` integers divided into
floats were internal errors (exit 3); ``rank 1e308`` and ``task t = 1e400 * a``
passed ``check`` and failed ``compile``. Each case names the range or limit
it is past. (A non-finite literal such as ``1e400`` may also be refused by
the parser; either way the error is located and exits 1, hence the
alternatives in some expected messages.)
"""

from __future__ import annotations

import math
import re

import pytest

from adaptlang.errors import SpecError, UsageError
from adaptlang.spec import load_spec

H = "adaptlang 1\n"
BIG = "1" + "0" * 98  # an integer literal of 99 digits: within the parser's 100-character limit, far past every range


def lora(*lines: str) -> str:
    return "lora a {\n    on q_proj\n" + "".join(f"    {line}\n" for line in lines) + "}\n"


ADAPTER = "adapter ad {\n    after mlp\n    size 8\n    scale 1.0\n}\n"

NON_FINITE = r"finite|too large|past the limit|inf|up to|expects"

# id, spec text, line of the error, a regex the message must contain
CASES = [
    ("rank-1e400", H + lora("rank 1e400"), 4, NON_FINITE),
    ("rank-1e308", H + lora("rank 1e308"), 4, r"`rank` expects a positive whole number up to 1,048,576"),
    ("rank-400-digit-int", H + lora(f"rank {BIG}"), 4, r"`rank` expects a positive whole number up to 1,048,576"),
    ("rank-over-max", H + lora("rank 2000000"), 4, r"up to 1,048,576, found 2000000"),
    ("rank-override-1e400", H + lora("rank 4 for layers[0].**", "rank 1e400 for layers[1].**"), 5, NON_FINITE),
    ("let-big-int-divided", H + f"let n = {BIG}\n" + lora("alpha n / 3"), 2,
     r"constant 'n' is too large: .*\(MAX_SPEC_NUMBER\)"),
    ("let-big-int-scaled", H + "let n = 99999999999999\nlet m = n * n * 0.5\n" + lora("alpha m"), 3,
     r"too large: .*1e\+15 \(MAX_SPEC_NUMBER\)"),
    ("let-int-times-float", H + f"let n = {BIG} * 1.5\n" + lora("alpha n"), 2, r"MAX_SPEC_NUMBER"),
    ("alpha-1e308", H + lora("alpha 1e308"), 4, r"`alpha` expects a number > 0 up to 1,000,000"),
    ("alpha-400-digit-int", H + lora(f"alpha {BIG}"), 4, r"`alpha` expects a number > 0 up to 1,000,000"),
    ("alpha-1e400", H + lora("alpha 1e400"), 4, NON_FINITE),
    ("scale-1e300", H + ADAPTER.replace("scale 1.0", "scale 1e300"), 5, r"`scale` expects a number from -1,000,000"),
    ("scale-minus-1e300", H + ADAPTER.replace("scale 1.0", "scale -1e300"), 5, r"from -1,000,000 to 1,000,000"),
    ("reduction-1e-300", H + ADAPTER.replace("size 8", "reduction 1e-300"), 4,
     r"`reduction` expects a number from 0.001 to 1,000,000"),
    ("seed-1e300", H + "sparse s {\n    on q_proj\n    density 0.1\n    seed 1e300\n}\n", 5,
     r"`seed` expects a whole number >= 0 up to"),
    ("tokens-1e15", H + "prompt p {\n    tokens 1e15\n}\n", 3, r"`tokens` expects a positive whole number up to"),
    ("block-1e400", H + "quantize nf4 {\n    on q_proj\n    block 1e400\n}\n", 4, NON_FINITE),
    ("density-1e400", H + "sparse s {\n    on q_proj\n    density 1e400\n}\n", 4, NON_FINITE),
    ("dropout-big-int", H + lora(f"dropout {BIG}"), 4, r"`dropout` expects a probability"),
    ("task-weight-1e400", H + lora() + "task t = 1e400 * a\n", 5, NON_FINITE),
    ("task-weight-let-1e12", H + "let w = 1e12\n" + lora() + "task t = w * a\n", 6,
     r"a task weight must be at most 1,000,000 \(MAX_TASK_WEIGHT\)"),
    ("task-weight-let-product", H + "let w = 1e10 * 1e10\n" + lora() + "task t = w * a\n", 2,
     r"MAX_SPEC_NUMBER"),
    ("task-weights-multiply-through-tasks",
     H + lora() + "task t1 = 1000 * a\ntask t2 = 1000 * t1\ntask t3 = 1000 * t2\n", 7,
     r"the weight of 'a' in task 't3' comes to 1000000000, past the limit of 1,000,000 \(MAX_TASK_WEIGHT\)"),
]


@pytest.mark.parametrize("text, line, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_out_of_range_numbers_are_located_spec_errors(text, line, message):
    with pytest.raises(SpecError) as err:
        load_spec(text)
    assert err.value.exit_code == 1
    rendered = err.value.render()
    assert re.search(message, rendered), rendered
    assert any(d.span is not None and d.span.line == line for d in err.value.diagnostics), rendered


SET_CASES = [
    ("set-inf", math.inf, r"constant 'r' is not a finite number"),
    ("set-nan", math.nan, r"constant 'r' is not a finite number"),
    ("set-300-nines", int("9" * 300), r"constant 'r' is too large: .*MAX_SPEC_NUMBER"),
    ("set-1e300", 1e300, r"constant 'r' is too large"),
    ("set-string", "16", r"constant 'r' must be a number"),
]


@pytest.mark.parametrize("value, message", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_set_values_past_the_limits_are_usage_errors_naming_the_constant(value, message):
    with pytest.raises(UsageError) as err:
        load_spec(H + "let r = 8\n" + lora("rank r"), constants={"r": value})
    assert err.value.exit_code == 2
    assert re.search(message, err.value.render()), err.value.render()


def test_numbers_inside_the_limits_still_work():
    spec = load_spec(H + "let r = 1048576\nlet w = 999999\n" + lora("rank r", "alpha 1e6") + "task t = w * a\n",
                     constants={"w": 0.5})
    assert spec.deltas["a"].rank == 1048576 and spec.deltas["a"].alpha == 1e6
    assert spec.tasks["t"].terms[0].weight == 0.5
