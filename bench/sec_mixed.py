"""Section 3: mixed-task batches. Each row under its own task, in one forward.

K tasks (K = 1, 2, 4, 8, 16), each its own all-linear r=16 LoRA, rows
assigned round-robin (row r runs task r mod K: the worst case, no two
neighbours share a task). Ours: ``adapted(input_ids, tasks=[...])``; PEFT:
``model(input_ids, adapter_names=[...])`` with the same weights copied in;
the reference is the same batch under a single task (``use(task)``). Outputs
of ours and PEFT's are asserted equal before timing.
"""

from __future__ import annotations

from typing import Any

import torch

import adaptlang
from bench.report import Row, make_row
from bench.setups import Setting, build_llama, copy_lora_to_peft, lora_spec, peft_lora_config, randomize, sync_for
from bench.sec_step import assert_same
from bench.timing import interleave, stats

__all__ = ["run"]

SECTION = "3 mixed"


def build(setting: Setting, ks: list[int]) -> tuple[Any, Any, list[str]]:
    """Ours with max(ks) tasks and PEFT with the same adapters (weights copied)."""
    from peft import get_peft_model

    names = [f"t{k}" for k in range(max(ks))]
    base = build_llama(setting)
    base.requires_grad_(False)
    peft_base = build_llama(setting)
    peft_base.requires_grad_(False)
    adapted = adaptlang.apply(base, lora_spec(names), task=names[0])
    randomize(adapted, [f"{n}_lora" for n in names], seed=2)
    peft = get_peft_model(peft_base, peft_lora_config(), adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, peft_lora_config())
    for name in names:
        copy_lora_to_peft(adapted, f"{name}_lora", peft, name)
    peft.eval()
    return adapted, peft, names


def run(setting: Setting, quick: bool) -> list[Row]:
    """Runs section 3 and returns its rows."""
    ks = [1, 2, 4, 8, 16] if not quick else [1, 8, 16]
    adapted, peft, names = build(setting, ks)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, setting.config["vocab_size"], (setting.mixed_batch, setting.seq), generator=gen)
    ids = ids.to(setting.device)
    rows_of = {k: [names[r % k] for r in range(setting.mixed_batch)] for k in ks}
    with torch.no_grad():  # equal outputs first, on a few rows with 4 tasks (or the most there are)
        k = min(4, max(ks))
        tasks = rows_of[max(ks)][:k]
        assert_same("mixed batch vs PEFT adapter_names",
                    adapted(input_ids=ids[:k, :32], tasks=tasks, logits_to_keep=1).logits,
                    peft(input_ids=ids[:k, :32], adapter_names=tasks, logits_to_keep=1).logits)
    bare = [None] * setting.mixed_batch
    cases = {"single": lambda: adapted(input_ids=ids, logits_to_keep=1),
             "bare": lambda: adapted(input_ids=ids, tasks=bare, logits_to_keep=1)}
    for k in ks:
        cases[f"ours K={k}"] = lambda t=rows_of[k]: adapted(input_ids=ids, tasks=t, logits_to_keep=1)
        cases[f"PEFT K={k}"] = lambda t=rows_of[k]: peft(input_ids=ids, adapter_names=t, logits_to_keep=1)
    with torch.inference_mode():
        t = interleave(cases, 2 if quick else 3, warmup=1, sync=sync_for(setting))
    note = (f"batch {setting.mixed_batch} x {setting.seq}, rows round-robin over K tasks; "
            "reference: the same batch under one task")
    rows = [make_row(SECTION, "single-task batch", t["single"], note=note)]
    for k in ks:
        target = ("<=", 1.25) if k == 8 else None
        rows.append(make_row(SECTION, f"ours K={k}", t[f"ours K={k}"], "single-task batch", t["single"], target))
    for k in ks:
        target = (">=", 2.0) if k == 8 else None
        rows.append(make_row(SECTION, f"PEFT K={k} / ours K={k}", t[f"ours K={k}"], f"ours K={k} (speed-up)",
                             t[f"PEFT K={k}"], target, invert=True))
    big = 8 if 8 in ks else ks[-1]
    rows.append(make_row(SECTION, f"PEFT K={big} adapter_names", t[f"PEFT K={big}"], "single-task batch",
                         t["single"]))
    rows.append(make_row(SECTION, "bare base (tasks all None)", t["bare"], "single-task batch", t["single"]))
    # What LoRA adds on top of the bare base, PEFT's over ours: the part of the forward the two do differently.
    cost = stats([(p - b) / max(o - b, 1e-9) for p, o, b in zip(t[f"PEFT K={big}"], t[f"ours K={big}"], t["bare"])])
    rows.append(Row(SECTION, f"LoRA cost: PEFT K={big} / ours K={big}", None, "time above the bare base", cost,
                    note="(PEFT - bare) / (ours - bare), per round"))
    return rows
