"""Section 2: forward and train step on a small Llama, ours and PEFT side by side.

Cases (all LoRA r=16 on every block Linear, alpha 32, dropout 0): the bare
base; PEFT; ours unmerged; ours merged; full fine-tuning (train only); two
stacked LoRAs (PEFT: two active adapters; ours: a task of two deltas); a
bottleneck adapter after every MLP (size 64; PEFT has none); prompt tuning
(20 tokens) vs PEFT's. Every model starts from the same base weights, our
deltas get random values and PEFT's are copied from them; outputs are
asserted equal before anything is timed.

The forward is ``model(input_ids, logits_to_keep=1)``: the whole network on
every token, logits for the last position only (what generation's prefill
does), so the ratios are about the layers LoRA changes, not the LM head.
The train step is a real one: full logits, loss, backward, AdamW step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import adaptlang
from adaptlang.runtime.adapted import Adapted
from bench.report import Row, make_row
from bench.setups import (
    Setting, build_llama, clone, copy_lora_to_peft, copy_prompt_to_peft, lora_flops_ratio, lora_spec,
    peft_lora_config, randomize, sync_for,
)
from bench.timing import interleave

__all__ = ["run"]

SECTION = "2 step"
EXTRA = """adapter bn {
    after layers[*].mlp
    size  64
    act   gelu
}
prompt p {
    tokens 20
    init   random
}
task stacked = a_lora + b_lora
task bottleneck = bn
task prompt = p
"""


def assert_same(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Asserts two outputs agree (relative to their size; looser in half precision)."""
    tol = 1e-4 if ours.dtype == torch.float32 else 2e-2
    err = (ours.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-6)
    if not err <= tol:
        raise AssertionError(f"{name}: outputs differ (max relative error {err:.2e} > {tol:g})")


def build(setting: Setting) -> dict[str, Any]:
    """Every model of the section, weights copied so that ours and PEFT's compute the same function."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    base = build_llama(setting)
    # Frozen like the adapted models' base weights: torch's matmul takes a slower path for the
    # LM head on a sliced input when the weight does not require a gradient, so equal flags matter.
    base.requires_grad_(False)
    spec = lora_spec(["lora", "a", "b"], extra=EXTRA)
    models: dict[str, Any] = {"base": base}
    for key, task in [("ours", "lora"), ("merged", "lora"), ("stacked", "stacked"), ("bottleneck", "bottleneck"),
                      ("prompt", "prompt")]:
        adapted = adaptlang.apply(clone(base), spec, task=task)
        randomize(adapted, ["lora_lora", "a_lora", "b_lora", "bn", "p"], seed=1)
        models[key] = adapted
    models["merged"].merge()
    peft_lora = get_peft_model(clone(base), peft_lora_config(), adapter_name="lora")
    copy_lora_to_peft(models["ours"], "lora_lora", peft_lora, "lora")
    peft_stacked = get_peft_model(clone(base), peft_lora_config(), adapter_name="a")
    peft_stacked.add_adapter("b", peft_lora_config())
    for name in ("a", "b"):
        copy_lora_to_peft(models["stacked"], f"{name}_lora", peft_stacked, name)
    peft_stacked.base_model.set_adapter(["a", "b"])
    peft_prompt = get_peft_model(clone(base), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20))
    copy_prompt_to_peft(models["prompt"], "p", peft_prompt)
    models.update(peft=peft_lora, peft_stacked=peft_stacked, peft_prompt=peft_prompt)
    for m in (peft_lora, peft_stacked, peft_prompt):
        m.eval()
    return models


def check_equal(models: dict[str, Any], ids: torch.Tensor) -> None:
    """Ours and PEFT's outputs agree, and merging changes nothing."""
    with torch.no_grad():
        def out(key: str) -> torch.Tensor:
            return models[key](input_ids=ids[:2], logits_to_keep=1).logits

        assert_same("LoRA vs PEFT", out("ours"), out("peft"))
        assert_same("merged vs unmerged", out("merged"), out("ours"))
        assert_same("stacked LoRAs vs PEFT", out("stacked"), out("peft_stacked"))
        assert_same("prompt tuning vs PEFT", out("prompt"), out("peft_prompt"))
        if torch.equal(out("bottleneck"), out("base")):
            raise AssertionError("the bottleneck adapter changes nothing")


def forward_rows(models: dict[str, Any], ids: torch.Tensor, rounds: int, sync: Any) -> list[Row]:
    """Times the forwards (inference mode) and makes their rows."""
    def fwd(key: str) -> Callable[[], Any]:
        model = models[key]
        return lambda: model(input_ids=ids, logits_to_keep=1)

    names = {"base": "base", "peft": "PEFT LoRA", "ours": "ours LoRA", "merged": "ours LoRA merged",
             "peft_stacked": "PEFT 2 stacked LoRAs", "stacked": "ours 2 stacked LoRAs",
             "bottleneck": "ours bottleneck adapter", "peft_prompt": "PEFT prompt tuning",
             "prompt": "ours prompt tuning"}
    with torch.inference_mode():
        t = interleave({k: fwd(k) for k in names}, rounds, warmup=1, sync=sync)
    base = t["base"]
    return [
        make_row(SECTION, "forward: base", base),
        make_row(SECTION, "forward: PEFT LoRA", t["peft"], "base", base),
        make_row(SECTION, "forward: ours LoRA", t["ours"], "base", base, ("<=", 1.08)),
        make_row(SECTION, "forward: ours LoRA", t["ours"], "PEFT LoRA", t["peft"]),
        make_row(SECTION, "forward: ours LoRA merged", t["merged"], "base", base, ("<=", 1.02)),
        make_row(SECTION, "forward: PEFT 2 stacked LoRAs", t["peft_stacked"], "base", base),
        make_row(SECTION, "forward: ours 2 stacked LoRAs", t["stacked"], "base", base, ("<=", 1.10)),
        make_row(SECTION, "forward: ours bottleneck adapter", t["bottleneck"], "base", base,
                 note="size 64 after every MLP; PEFT has no bottleneck adapters"),
        make_row(SECTION, "forward: PEFT prompt tuning", t["peft_prompt"], "base", base),
        make_row(SECTION, "forward: ours prompt tuning", t["prompt"], "PEFT prompt tuning", t["peft_prompt"]),
    ]


def train_rows(models: dict[str, Any], ids: torch.Tensor, rounds: int, sync: Any) -> list[Row]:
    """Times one training step per case (loss, backward, AdamW step) and makes their rows."""
    full = models["base"]
    full.requires_grad_(True)
    steps: dict[str, Callable[[], Any]] = {}
    for key in ("peft", "ours", "base", "peft_stacked", "stacked", "bottleneck", "peft_prompt", "prompt"):
        model = models[key]
        module = model.model if isinstance(model, Adapted) else model
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step(model: Any = model, opt: Any = opt) -> None:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[key] = step
    with torch.no_grad():  # the same loss before any step (dropout is 0)
        assert_same("train loss vs PEFT", models["ours"](input_ids=ids, labels=ids).loss,
                    models["peft"](input_ids=ids, labels=ids).loss)
    t = interleave(steps, rounds, warmup=1, sync=sync)
    peft = t["peft"]
    return [
        make_row(SECTION, "train step: PEFT LoRA", peft),
        make_row(SECTION, "train step: ours LoRA", t["ours"], "PEFT LoRA", peft, ("<=", 0.9)),
        make_row(SECTION, "train step: full fine-tuning", t["base"], "PEFT LoRA", peft),
        make_row(SECTION, "train step: ours 2 stacked LoRAs", t["stacked"], "PEFT 2 stacked LoRAs",
                 t["peft_stacked"]),
        make_row(SECTION, "train step: ours bottleneck adapter", t["bottleneck"], "PEFT LoRA", peft),
        make_row(SECTION, "train step: ours prompt tuning", t["prompt"], "PEFT prompt tuning", t["peft_prompt"]),
    ]


def run(setting: Setting, quick: bool) -> list[Row]:
    """Runs section 2 and returns its rows."""
    models = build(setting)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, setting.config["vocab_size"], (setting.batch, setting.seq), generator=gen)
    ids = ids.to(setting.device)
    check_equal(models, ids)
    sync = sync_for(setting)
    rows = forward_rows(models, ids, 5 if quick else 25, sync)
    tokens = setting.batch * setting.seq
    floor = lora_flops_ratio(setting.config, 16, setting.batch, tokens)
    rows[2].note = (f"batch {setting.batch} x {setting.seq}, {setting.dtype}; arithmetic floor "
                    f"{floor:.3f}x (multiply-adds of the block Linears and the head)")
    rows += train_rows(models, ids, 3 if quick else 9, sync)
    return rows
