"""Binding errors that say why a module cannot take a delta (placed at the selector, with the numbers)."""

from __future__ import annotations

import pytest

import adaptlang
from adaptlang.errors import BindError

SPEC = """adaptlang 1
adapter par {
    parallel {on}
    size 8
}
"""


def test_a_parallel_adapter_on_a_module_whose_widths_differ_says_so():
    with pytest.raises(BindError) as info:
        adaptlang.compile(SPEC.replace("{on}", "layers[*].mlp.down_proj"), model="llama")
    diag = info.value.diagnostics[0]
    assert (diag.span.line, diag.span.col) == (3, 14)
    assert "input and output widths must be equal" in diag.hint
    assert diag.notes[0] == "'model.layers.0.mlp.down_proj' (Linear, in 11008 != out 4096)"  # Llama-2-7B's MLP


def test_a_parallel_adapter_on_a_block_of_equal_widths_binds():
    plan = adaptlang.compile(SPEC.replace("{on}", "layers[*].mlp"), model="llama")
    site = plan.to_dict()["deltas"]["par"]["sites"][0]
    assert (site["dim"], site["size"], site["params"]) == (4096, 8, 2 * 4096 * 8 + 8 + 4096)
