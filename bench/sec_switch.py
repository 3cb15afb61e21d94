"""Section 4: task switching. 8 tasks on the Llama-2-7B structure; ``use()`` vs PEFT's ``set_adapter``.

Each task is its own all-linear r=16 LoRA (224 sites, 1792 parts in all).
The model is built on the meta device: switching moves no tensor data in
either library (it flips which deltas run and which parameters train), so
the structure alone decides the cost. A sample is one switch, cycling
through the 8 tasks; both must leave the same parameters trainable
(asserted).
"""

from __future__ import annotations

import itertools
from typing import Any

import adaptlang
from adaptlang.plan.models import load_model
from bench.report import Row, make_row
from bench.setups import lora_spec, peft_lora_config
from bench.timing import interleave

__all__ = ["run"]

SECTION = "4 switch"
TASKS = [f"task{k}" for k in range(8)]


def run(setting: Any, quick: bool) -> list[Row]:
    """Runs section 4 and returns its rows."""
    from peft import get_peft_model

    adapted = adaptlang.apply(load_model("llama", device="meta")[0], lora_spec(TASKS), task=TASKS[0])
    peft = get_peft_model(load_model("llama", device="meta")[0], peft_lora_config(), adapter_name=TASKS[0],
                          low_cpu_mem_usage=True)
    for name in TASKS[1:]:
        peft.add_adapter(name, peft_lora_config(), low_cpu_mem_usage=True)
    for name in TASKS:  # same trainable parameter count after each switch
        adapted.use(name)
        peft.set_adapter(name)
        mine = sum(p.numel() for _, p in adapted.trainable_parameters())
        theirs = sum(p.numel() for p in peft.parameters() if p.requires_grad)
        if mine != theirs:
            raise AssertionError(f"after switching to {name}: ours trains {mine} parameters, PEFT {theirs}")
    ours_cycle, peft_cycle = itertools.cycle(TASKS), itertools.cycle(TASKS)
    cases = {"ours": lambda: adapted.use(next(ours_cycle)), "peft": lambda: peft.set_adapter(next(peft_cycle))}
    t = interleave(cases, 20 if quick else 50, warmup=8, inner=8)
    note = "Llama-2-7B structure on the meta device, 8 tasks x 224 LoRA sites; one switch per call"
    return [make_row(SECTION, "PEFT set_adapter", t["peft"]),
            make_row(SECTION, "ours use()", t["ours"], "PEFT (speed-up)", t["peft"], (">=", 5.0), invert=True,
                     note=note),
            Row(SECTION, "ours use() under 1 ms", make_row(SECTION, "", t["ours"]).time, "1 ms",
                make_row(SECTION, "", [x * 1e3 for x in t["ours"]]).time, ("<=", 1.0),
                note="ratio column: the median switch in milliseconds")]
