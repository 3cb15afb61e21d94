"""Many ``for`` overrides: binding is linear in their number (no fixed-size memo to fall off).

Issue 10, section 4: a memo of 32 selectors in ``plan/select.py`` made the
33rd override evict the others at every site: on ``llama-2-70b`` 32
overrides took 0.7 s, 33 took 11.5 s and 300 over 60 s. The bound below is
generous (measured after the fix: 300 overrides in about 2 s on two busy cores).
"""

from __future__ import annotations

import time

import pytest

from adaptlang.plan.compiler import compile_plan
from adaptlang.plan.signature import load_preset_signature

FAST = 10.0  # seconds; 300 overrides used to take over a minute


def _spec(n: int) -> str:
    lines = "".join(f"    rank {1 + i % 16} for layers[{i % 80}].**\n" for i in range(n))
    return f"adaptlang 1\nlora a {{\n    on layers[*].self_attn.{{q_proj, v_proj}}\n    rank 8\n{lines}}}\n"


@pytest.mark.parametrize("n", [33, 100, 300], ids=["33-overrides", "100-overrides", "300-overrides"])
def test_many_overrides_bind_fast_and_the_last_match_wins(n):
    sig = load_preset_signature("llama-2-70b")
    start = time.perf_counter()
    plan = compile_plan(_spec(n), sig)
    assert time.perf_counter() - start < FAST
    ranks = {site["path"]: site["rank"] for site in plan.to_dict()["deltas"]["a"]["sites"]}
    for layer in range(80):
        last = max(i for i in range(n) if i % 80 == layer) if layer < n else None
        expected = 8 if last is None else 1 + last % 16
        assert ranks[f"model.layers.{layer}.self_attn.q_proj"] == expected
