"""Every spec in ``specs/`` compiles with its numbers pinned, and matches its golden plan.

The pinned numbers are closed-form arithmetic on the published model shapes
(Llama-2-7B: 32 layers, hidden 4096, MLP 11008, vocab 32000; BERT-base: 12
layers, hidden 768, MLP 3072), written out next to each number, so a change in
the compiler, a preset or a spec shows up as a failure naming what moved.

Golden files (``tests/golden/plans/<spec>.json``) hold each spec's whole plan
JSON; ``pytest --update-golden`` rewrites them after an intended change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptlang.plan.compiler import compile_plan

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"
GOLDEN = REPO / "tests" / "golden" / "plans"

Q = 4096 * 4096          # one attention projection's weight (numel)
M = 4096 * 11008         # one MLP projection's weight (numel)
LORA_Q = 4096 + 4096     # LoRA per rank on an attention projection: in + out
LORA_M = 4096 + 11008    # ... on an MLP projection
BOTTLENECK_64 = 2 * 4096 * 64 + 64 + 4096  # down (with bias) + up (with bias)

#: spec -> {delta: params} and {task: (trainable, bundle)}
PINNED = {
    "lora": ({"qv": 32 * 2 * 8 * LORA_Q}, {"default": (4_194_304, 4_194_304)}),
    # q, k, v, o at rank 8, plus DoRA's magnitude (one per output)
    "dora": ({"attn": 32 * 4 * (8 * LORA_Q + 4096)}, {"default": (8_912_896, 8_912_896)}),
    # all seven projections at rank 64: 32 * (4 * 64 * 8192 + 3 * 64 * 15104)
    "rslora": ({"all_linear": 32 * 64 * (4 * LORA_Q + 3 * LORA_M)}, {"default": (159_907_840, 159_907_840)}),
    "qlora": ({"all_linear": 159_907_840}, {"default": (159_907_840, 159_907_840)}),
    # k and v scale their outputs (4096 each), down_proj its input (11008)
    "ia3": ({"scale": 32 * (4096 + 4096 + 11008)}, {"default": (614_400, 614_400)}),
    # reduction 16 on 4096 -> size 256
    "bottleneck": (
        {"houlsby_attn": 32 * BOTTLENECK_64, "houlsby_mlp": 32 * BOTTLENECK_64,
         "pfeiffer": 32 * (2 * 4096 * 256 + 256 + 4096)},
        {"houlsby": (33_820_672, 33_820_672), "pfeiffer": (67_248_128, 67_248_128)}),
    "prompt": ({"prefix": 32 * 4096}, {"default": (131_072, 131_072)}),
    # two whole blocks (4 Q-sized + 3 M-sized weights + 2 norms each), the final norm, lm_head
    "partial": ({"top": 2 * (4 * Q + 3 * M + 2 * 4096) + 4096 + 32000 * 4096},
                {"default": (535_842_816, 535_842_816)}),
    # BERT-base biases: per layer q,k,v,o (4 x 768), attention LayerNorm 768, intermediate 3072,
    # output 768, output LayerNorm 768; plus the embeddings' LayerNorm and the pooler (768 each)
    "bitfit": ({"biases": 12 * (4 * 768 + 768 + 3072 + 768 + 768) + 768 + 768},
               {"default": (102_912, 102_912)}),
    # 0.5% of down_proj in layers 0-27 (round(225,443.84)), 1% in the last four (round(450,887.68))
    "sparse": ({"mlp_out": 28 * 225_444 + 4 * 450_888}, {"default": (8_115_984, 8_115_984)}),
    # LANGUAGE.md's tables, verbatim
    # BERT-base with a 2-label classification head: LoRA rank 8 on query and value in 12 layers
    # (8 x (768 in + 768 out) each); the classifier is Linear(768, 2): 768 x 2 weights + 2 biases.
    "sentiment": ({"qv": 12 * 2 * 8 * (768 + 768), "head": 768 * 2 + 2}, {"sentiment": (296_450, 296_450)}),
    "multitask": (
        {"attn": 4_194_304, "mlp": 7_249_920, "bottleneck": 16_910_336, "instruct": 81_920,
         "head": 131_072_000},
        {"sentiment": (21_104_640, 21_104_640), "qa": (11_444_224, 11_444_224),
         "both": (28_354_560, 28_354_560), "qa_v2": (131_153_920, 142_598_144)}),
}

#: Sites per delta where the count says something (LANGUAGE.md's table for multitask).
SITES = {
    "multitask": {"attn": 64, "mlp": 24, "bottleneck": 32, "instruct": 1, "head": 1},
    "qlora": {"all_linear": 224},
    "bitfit": {"biases": 12 * 8 + 2},
}


#: Specs whose model needs a task head (``adaptc compile --head ... --num-labels ...``).
HEADS = {"sentiment": {"head": "sequence-classification", "num_labels": 2}}


def test_every_spec_is_pinned():
    assert sorted(p.stem for p in SPECS.glob("*.adapt")) == sorted(PINNED)


@pytest.fixture(scope="module", params=sorted(PINNED))
def compiled(request):
    """``(name, plan)`` for each spec, compiled against its own ``model`` statement (with its head)."""
    return request.param, compile_plan(SPECS / f"{request.param}.adapt", **HEADS.get(request.param, {}))


def test_spec_numbers_are_exact(compiled):
    name, plan = compiled
    deltas, tasks = PINNED[name]
    assert {d: plan.delta(d)["params"] for d in plan.deltas} == deltas
    assert {t: (plan.task(t)["trainable_params"], plan.task(t)["bundle_params"]) for t in plan.tasks} == tasks
    for delta, count in SITES.get(name, {}).items():
        assert plan.delta(delta)["site_count"] == count


def test_spec_plan_matches_golden(compiled, update_golden):
    name, plan = compiled
    golden = GOLDEN / f"{name}.json"
    text = plan.to_json()
    if update_golden or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text(), f"plan of {name} changed; rerun with --update-golden if intended"


def test_qlora_reports_the_nf4_layout():
    plan = compile_plan(SPECS / "qlora.adapt")
    sites = plan.quantize
    assert len(sites) == 32 * 7 and {s["format"] for s in sites} == {"nf4"}
    # fp16 before; NF4 after: half a byte per weight, an 8-bit scale per 64 weights, an
    # fp32 scale per 256 of those and one fp32 offset (QLoRA's double quantization), per matrix.
    assert sum(s["bytes_before"] for s in sites) == 2 * 32 * (4 * Q + 3 * M)
    per_q = Q // 2 + Q // 64 + 4 * (Q // 64 // 256) + 4
    per_m = M // 2 + M // 64 + 4 * (M // 64 // 256) + 4
    assert sum(s["bytes_after"] for s in sites) == 32 * (4 * per_q + 3 * per_m) == 3_340_772_224
