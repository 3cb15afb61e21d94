"""Parameter counts agree with PEFT's, and with the closed forms they come from.

PEFT is the reference: for each case the same model preset is built on the
meta device, wrapped with ``get_peft_model(..., low_cpu_mem_usage=True)``, and
its trainable count compared with the plan's. The literal numbers are pinned
too, with their arithmetic, so a change in PEFT or in a preset shows up as a
failure naming which side moved.
"""

from __future__ import annotations

import warnings

import pytest

from adaptlang.plan import accounting as acc
from adaptlang.plan.compiler import compile_plan

peft = pytest.importorskip("peft")


def peft_trainable(preset: str, config: object) -> int:
    """Returns PEFT's trainable parameter count for ``config`` on a meta ``preset``."""
    from adaptlang.plan.models import load_model

    model, _ = load_model(preset, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, config, low_cpu_mem_usage=True)
    return wrapped.get_nb_trainable_parameters()[0]


def plan_params(spec_body: str, preset: str) -> int:
    """Compiles a one-delta spec against ``preset``; returns its default task's trainable count."""
    plan = compile_plan(f"adaptlang 1\n{spec_body}", preset)
    return plan.task("default")["trainable_params"]


# Each case: spec body, preset, PEFT config factory, the pinned number and its arithmetic.
CASES = {
    # 32 layers x 2 projections x 8 * (4096 + 4096)
    "llama-lora-qv": (
        "lora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 8 }", "llama",
        lambda: peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]), 4_194_304),
    # 12 GPT-2 blocks x Conv1D c_attn 8 * (768 + 2304)
    "gpt2-lora-conv1d": (
        "lora a { on h[*].attn.c_attn\n rank 8 }", "gpt2",
        lambda: peft.LoraConfig(r=8, target_modules=["c_attn"], fan_in_fan_out=True), 294_912),
    # 12 BERT layers x 2 x 8 * (768 + 768)
    "bert-lora-qv": (
        "lora a { on layer[*].attention.self.{query, value}\n rank 8 }", "bert-base",
        lambda: peft.LoraConfig(r=8, target_modules=["query", "value"]), 294_912),
    # GPT-2 token embedding: 8 * (50257 + 768)
    "gpt2-lora-embedding": (
        "lora a { on wte\n rank 8 }", "gpt2",
        lambda: peft.LoraConfig(r=8, target_modules=["wte"]), 408_200),
    # LoRA + a DoRA magnitude per output: 4,194,304 + 64 * 4096
    "llama-dora-qv": (
        "lora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 8\n variant dora }", "llama",
        lambda: peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], use_dora=True), 4_456_448),
    # LoRA + a bias on B per output: 4,194,304 + 64 * 4096
    "llama-lora-bias": (
        "lora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 8\n bias true }", "llama",
        lambda: peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_bias=True), 4_456_448),
    # QLoRA's all-linear r=64: 32 * (4 * 64 * 8192 + 3 * 64 * 15104)
    "llama-lora-all-linear": (
        "lora a { on layers[*].** is Linear\n rank 64 }", "llama",
        lambda: peft.LoraConfig(r=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"]),
        159_907_840),
    # Per-site ranks = PEFT's rank_pattern: 18 * 16 * 15104 + 6 * 32 * 15104
    "llama-lora-rank-override": (
        "lora a { on layers[-8:].mlp.** is Linear\n rank 16\n rank 32 for layers[-2:].** }", "llama",
        lambda: peft.LoraConfig(r=16, target_modules=r".*layers\.(2[4-9]|3[01])\.mlp\.\w+_proj",
                                rank_pattern={r"layers\.3[01]\.mlp\.\w+_proj": 32}),
        7_249_920),
    # IA3: k and v scale outputs (4096 each), down_proj its input (11008): 32 * 19200
    "llama-ia3": (
        "ia3 a { on layers[*].{self_attn.k_proj, self_attn.v_proj, mlp.down_proj}\n"
        " feedforward true for mlp.down_proj }", "llama",
        lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                               feedforward_modules=["down_proj"]), 614_400),
    # 20 virtual tokens x 4096
    "llama-prompt": (
        "prompt a { tokens 20 }", "llama",
        lambda: peft.PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"), 81_920),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_counts_equal_peft(case: str) -> None:
    body, preset, config, pinned = CASES[case]
    ours = plan_params(body, preset)
    assert ours == pinned
    assert peft_trainable(preset, config()) == pinned


def test_lora_counts_follow_the_closed_form() -> None:
    # A is rank x in, B is out x rank; bias and DoRA each add one vector of out.
    assert acc.count_lora(4096, 4096, 8) == 8 * 8192
    assert acc.count_lora(4096, 11008, 16, bias=True) == 16 * 15104 + 11008
    assert acc.count_lora(768, 2304, 4, variant="dora") == 4 * 3072 + 2304
    assert acc.count_lora(768, 2304, 4, variant="rslora") == 4 * 3072


def test_other_kinds_follow_the_closed_form() -> None:
    assert acc.count_ia3(11008, 4096) == 4096
    assert acc.count_ia3(11008, 4096, feedforward=True) == 11008
    assert acc.count_adapter(4096, 64) == 2 * 4096 * 64 + 64 + 4096 == 528_448
    assert acc.size_from_reduction(4096, 16) == 256
    assert acc.size_from_reduction(768, 1000) == 0
    assert acc.count_prompt(20, 4096) == 81_920
    assert acc.count_numel((32000, 4096)) == 131_072_000
    assert acc.count_numel(()) == 1


def test_sparse_count_rounds_and_keeps_at_least_one() -> None:
    assert acc.count_sparse(0.005, 4096 * 4096) == 83_886  # 83886.08
    assert acc.count_sparse(0.01, 11008 * 4096) == 450_888  # 450887.68
    assert acc.count_sparse(1e-9, 10) == 1


def test_quantized_bytes_match_the_qlora_layout() -> None:
    numel = 4096 * 4096
    blocks = numel // 64  # 262,144 absmax scales
    # NF4: two weights per byte; fp32 scale per block without double quantization.
    assert acc.quantized_bytes(numel, "nf4", 64, False) == numel // 2 + 4 * blocks
    # Double: 8-bit scales plus one fp32 scale per 256 of them (1,024 of those) and the
    # fp32 offset subtracted from the scales before they are quantized (one per weight).
    assert acc.quantized_bytes(numel, "nf4", 64, True) == numel // 2 + blocks + 4 * 1024 + 4
    assert acc.quantized_bytes(numel, "int8", 64, True) == numel + blocks + 4 * 1024 + 4
    # QLoRA's figure: 4 + 8/64 + 32/(64*256) bits per weight (the offset is 32 bits per matrix).
    bits = 8 * (acc.quantized_bytes(numel, "nf4", 64, True) - 4) / numel
    assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))


def test_task_memory_adds_weights_gradients_and_adam() -> None:
    memory = acc.estimate_task_memory(base_bytes=1000, trainable_params=10, frozen_delta_params=5,
                                      released_base_bytes=100)
    assert memory == {
        "frozen_bytes": 1000 - 100 + 4 * 5,
        "trainable_bytes": 40,
        "gradient_bytes": 40,
        "optimizer_bytes": 80,
        "total_bytes": 920 + 40 + 40 + 80,
    }
    assert acc.dtype_bytes("torch.bfloat16") == 2
    assert acc.dtype_bytes("float16") == 2
