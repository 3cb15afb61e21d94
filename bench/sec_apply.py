"""Section 1: compile and apply, ours vs PEFT's ``get_peft_model``.

An all-linear r=16 LoRA (every ``nn.Linear`` of every block, as PEFT's
``target_modules="all-linear"``): ours is ``adaptlang.apply(model, spec)``
from spec text (parse, compile, patch); PEFT's is ``get_peft_model``. On
meta-device presets (``llama``, ``llama-2-70b``, ``mixtral-8x7b``; nothing
allocated, PEFT with ``low_cpu_mem_usage=True``) each round patches a freshly
built model (building is not timed). With real random weights on a
Llama-3.2-1B-shaped model (fp32), both patch the same model, which is taken
back between rounds (``remove()`` / ``unload()``), and PEFT runs with its
defaults (its adapters get initial values, as ours do). Both must adapt the
same modules with the same number of trainable parameters (asserted).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import adaptlang
from adaptlang.plan.models import load_model
from bench.report import Row, make_row
from bench.setups import lora_spec, peft_lora_config
from bench.timing import interleave

__all__ = ["run"]

SECTION = "1 apply"
SPEC = lora_spec(["all"])


def our_paths(model: nn.Module) -> set[str]:
    """Paths of the modules we wrapped."""
    from adaptlang.runtime.site import SiteModule

    return {path for path, m in model.named_modules() if isinstance(m, SiteModule)}


def peft_paths(model: nn.Module) -> set[str]:
    """Paths (in the base model) of PEFT's LoRA layers."""
    return {path.removeprefix("base_model.model.") for path, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), nn.ModuleDict)}


def check_same(ours: Any, peft: Any) -> None:
    """Ours and PEFT's adapt the same modules with the same trainable parameter count."""
    mine, theirs = our_paths(ours.model), peft_paths(peft)
    if mine != theirs:
        raise AssertionError(f"adapted modules differ: {sorted(mine ^ theirs)[:5]}")
    n_ours = sum(p.numel() for _, p in ours.trainable_parameters())
    n_peft = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    if n_ours != n_peft:
        raise AssertionError(f"trainable parameters differ: ours {n_ours}, PEFT {n_peft}")


def run_preset(name: str, rounds: int) -> list[Row]:
    """Times both on fresh meta-device builds of a preset."""
    from peft import get_peft_model

    def fresh() -> nn.Module:
        return load_model(name, device="meta")[0]

    check_same(adaptlang.apply(fresh(), SPEC),
               get_peft_model(fresh(), peft_lora_config(), low_cpu_mem_usage=True))
    cases = {
        "ours": (fresh, lambda m: adaptlang.apply(m, SPEC)),
        "peft": (fresh, lambda m: get_peft_model(m, peft_lora_config(), low_cpu_mem_usage=True)),
    }
    t = interleave(cases, rounds, warmup=1)
    return [make_row(SECTION, f"{name} (meta): PEFT get_peft_model", t["peft"]),
            make_row(SECTION, f"{name} (meta): ours compile+apply", t["ours"], "PEFT (speed-up)", t["peft"],
                     (">=", 5.0), invert=True)]


def run_real(rounds: int) -> list[Row]:
    """Times both on one Llama-3.2-1B-shaped model with random fp32 weights."""
    from peft import get_peft_model

    model = load_model("llama-3.2-1b", device="meta", dtype=torch.float32)[0]
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
    model.tie_weights()
    model.eval()
    before = [type(m) for m in model.modules()]
    pending: list[Any] = []  # how to take off the last patch; undone before the next sample, untimed

    def clean() -> nn.Module:
        while pending:
            pending.pop()()
        return model

    def ours(m: nn.Module) -> None:
        pending.append(adaptlang.apply(m, SPEC).remove)

    def peft(m: nn.Module) -> None:
        pending.append(get_peft_model(m, peft_lora_config()).unload)

    t = interleave({"ours": (clean, ours), "peft": (clean, peft)}, rounds, warmup=1)
    clean()
    if [type(m) for m in model.modules()] != before:
        raise AssertionError("the 1B model was not restored between rounds")
    check_same(adaptlang.apply(model, SPEC), get_peft_model(load_model("llama-3.2-1b", device="meta")[0],
                                                            peft_lora_config(), low_cpu_mem_usage=True))
    note = "random fp32 weights, 1.24B parameters; PEFT with its defaults (adapter values initialised)"
    return [make_row(SECTION, "llama-3.2-1b (real): PEFT get_peft_model", t["peft"]),
            make_row(SECTION, "llama-3.2-1b (real): ours compile+apply", t["ours"], "PEFT (speed-up)", t["peft"],
                     (">=", 5.0), invert=True, note=note)]


def run(setting: Any, quick: bool) -> list[Row]:
    """Runs section 1 and returns its rows."""
    # The real-weights case first: after thousands of meta-model objects have come and gone, the
    # allocator hands out fresh pages for the adapters' random values and both sides slow down
    # by half (seen on this machine: ours 37 -> 70 ms, PEFT 116 -> 130 ms).
    real = run_real(3 if quick else 5)
    rows: list[Row] = []
    for name in ("llama", "llama-2-70b", "mixtral-8x7b"):
        rows += run_preset(name, 3 if quick else 5)
    return rows + real  # table order: the meta presets, then the real model
