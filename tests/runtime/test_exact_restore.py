"""``merge()`` then ``unmerge()`` / ``remove()`` gives every base tensor back bit for bit, in every dtype.

Tiny Llama (Linear, with biases, and an Embedding) and GPT-2 (Conv1D, a
position Embedding) models built from configs, in fp32, bf16, fp16 and fp64;
every mergeable kind (LoRA plain / DoRA / rsLoRA with a bias, IA3 on the
output and the input, sparse on a weight and on a bias), alone and stacked at
one site with task weights; random factors so that merging really changes
the weights. ``torch.equal`` on every base tensor against a clone taken
before ``apply``, and the merged forward against the unmerged one.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import adaptlang
from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime import merging
from adaptlang.runtime.site import SiteModule
from tests.model_state import assert_same_state, capture_state
from tests.runtime.adapted_support import logits, randomize

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
#: Merged vs unmerged logits (the merged weight is rounded to the base dtype once).
TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 0.1, torch.float16: 2e-2}

LLAMA_SPEC = """adaptlang 1
lora plain {
    on    layers[*].self_attn.{q_proj, v_proj}
    rank  4
    alpha 8
    bias  true
}
lora dora {
    on      layers[*].self_attn.q_proj
    variant dora
    rank    2
}
lora rs {
    on      layers[*].self_attn.{q_proj, o_proj}
    variant rslora
    rank    4
    alpha   16
}
ia3 out {
    on layers[*].self_attn.{q_proj, k_proj}
}
ia3 inp {
    on          layers[*].{self_attn.q_proj, mlp.down_proj}
    feedforward true
}
sparse sp {
    on      layers[*].{self_attn.q_proj, mlp.up_proj}
    density 5%
    select  random
}
sparse spb {
    on      layers[*].self_attn.k_proj.bias
    density 25%
    select  random
}
lora emb {
    on   embed_tokens
    rank 4
}
task stacked = 0.5 * plain + dora + 0.75 * rs + out + 0.5 * inp + 2 * sp + spb + emb
task plain_t = plain
task dora_t  = dora
task rs_t    = rs
task ia3_t   = out + inp
task sp_t    = sp + spb
task emb_t   = emb
"""
LLAMA_DELTAS = ("plain", "dora", "rs", "out", "inp", "sp", "spb", "emb")

GPT2_SPEC = """adaptlang 1
lora qkv {
    on   h[*].attn.c_attn
    rank 4
    bias true
}
lora pos {
    on   wpe
    rank 2
}
ia3 fc {
    on h[*].mlp.c_fc
}
ia3 proj {
    on          h[*].mlp.c_proj
    feedforward true
}
sparse sb {
    on      h[*].attn.c_attn.bias
    density 10%
    select  random
}
task stacked = qkv + 0.5 * pos + fc + 2 * proj + sb
"""
GPT2_DELTAS = ("qkv", "pos", "fc", "proj", "sb")


def llama(dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, attention_bias=True)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def gpt2(dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


MODELS = {"llama": (llama, LLAMA_SPEC, LLAMA_DELTAS), "gpt2": (gpt2, GPT2_SPEC, GPT2_DELTAS)}


def adapted_model(name: str, dtype: torch.dtype):
    """(model, its exact state before apply, the adapted handle with random factors)."""
    build, spec, deltas = MODELS[name]
    model = build(dtype)
    state = capture_state(model)
    adapted = adaptlang.apply(model, spec, task="stacked")
    randomize(adapted, *deltas)
    return model, state, adapted


def assert_base_bits(model, before: dict, dtype: torch.dtype | None = None) -> None:
    """Every base tensor equals ``before`` bit for bit (converted to ``dtype`` first when given)."""
    state = model.state_dict()
    for key, value in before.items():
        want = value if dtype is None else value.to(dtype)
        assert state[key].dtype == want.dtype, key
        assert torch.equal(state[key], want), f"{key}: {int((state[key] != want).sum())} entries differ"


def changed(model, before: dict) -> set[str]:
    state = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(state[k], v)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_every_kind_merges_and_comes_back_bit_for_bit(name, dtype, rt):
    model, state, adapted = adapted_model(name, dtype)
    before = state.values
    batch = rt.lm_batch(vocab=128)
    for task in adapted.tasks:
        adapted.use(task)
        unmerged = logits(adapted, batch)
        report = adapted.merge()
        assert report["merged"] and not report["not_merged"], (task, report)
        assert changed(model, before), f"merging {task} changed no base tensor"
        torch.testing.assert_close(logits(adapted, batch), unmerged, atol=TOL[dtype], rtol=TOL[dtype])
        adapted.unmerge()
        assert_base_bits(model, before)
        assert torch.equal(logits(adapted, batch), unmerged), task
    adapted.use("stacked")
    adapted.merge()
    adapted.remove()  # while merged
    assert_same_state(model, state)


def test_the_stacked_task_folds_every_kind_into_one_site():
    model, state, adapted = adapted_model("llama", torch.bfloat16)
    before = state.values
    q = adapted._patch.sites["model.layers.0.self_attn.q_proj"]
    assert sorted(n for n, _ in q.active) == ["dora", "inp", "out", "plain", "rs", "sp"]
    adapted.merge()
    assert q._merged_names == {"dora", "inp", "out", "plain", "rs", "sp"}
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.bias", "model.embed_tokens.weight"} <= changed(model, before)
    adapted.unmerge()
    assert_base_bits(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_merge_then_another_task_then_remove(dtype, rt):
    model, state, adapted = adapted_model("llama", dtype)
    before = state.values
    batch = rt.lm_batch(vocab=128)
    with adapted.use("ia3_t"):
        expected = logits(adapted, batch)
    adapted.merge()
    adapted.use("ia3_t")  # unmerges first
    assert not adapted.merged
    assert_base_bits(model, before)
    assert torch.equal(logits(adapted, batch), expected)
    adapted.merge()
    adapted.merge(keep="none")  # merging twice: a no-op, the first merge stays in force
    assert adapted.merge()["keep"] == "device"
    adapted.remove()
    assert_same_state(model, state)


def test_factors_changed_while_merged_do_not_change_what_comes_back(rt):
    model, state, adapted = adapted_model("llama", torch.bfloat16)
    before = state.values
    batch = rt.lm_batch(vocab=128)
    params = [p for _, p in adapted.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    adapted(**batch).loss.backward()  # an unmerged step: every factor gets a gradient and momentum
    optimizer.step()
    adapted.merge()
    optimizer.zero_grad(set_to_none=False)
    loss = adapted(**batch).loss
    # Every site of the task is merged: no factor is in the forward, so none can get a gradient...
    assert not loss.requires_grad
    factors = [p.detach().clone() for p in params]
    optimizer.step()  # ...but momentum and weight decay still move them
    assert not all(torch.equal(p, f) for p, f in zip(params, factors))
    model.eval()
    adapted.unmerge()
    assert_base_bits(model, before)
    # The unmerged forward now runs the changed factors: the same as a fresh model given them.
    twin, _, twin_adapted = adapted_model("llama", torch.bfloat16)
    twin_adapted.load_adapter_state_dict(adapted.adapter_state_dict())
    assert torch.equal(logits(adapted, batch), logits(twin_adapted, batch))


def test_save_while_merged_writes_the_unmerged_bundle(tmp_path):
    model, state, adapted = adapted_model("llama", torch.bfloat16)
    before = state.values
    [plain] = adapted.save(tmp_path / "plain", tasks=["stacked"])
    adapted.merge()
    [merged] = adapted.save(tmp_path / "merged", tasks=["stacked"])
    a, b = load_file(str(plain)), load_file(str(merged))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.read_bytes() == merged.read_bytes()
    adapted.remove()
    assert_base_bits(model, before)


def test_a_failing_merge_changes_no_weight(monkeypatch):
    model, state, adapted = adapted_model("llama", torch.float32)
    before = state.values
    # Inside one site: the weight's copy is made, the bias's fails; nothing was written yet.
    calls = []
    keep_copy = merging._keep_copy

    def second_fails(tensor, keep):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("injected")
        return keep_copy(tensor, keep)

    monkeypatch.setattr(merging, "_keep_copy", second_fails)
    q = adapted._patch.sites["model.layers.0.self_attn.q_proj"]
    with pytest.raises(MemoryError):
        q.merge()
    assert not q.merged
    assert_base_bits(model, before)
    monkeypatch.undo()
    # Across sites: an unexpected error on the third site unmerges the two before it.
    merge = SiteModule.merge
    done = []

    def third_fails(self, keep="device"):
        done.append(self)
        if len(done) == 3:
            raise RuntimeError("injected")
        return merge(self, keep)

    monkeypatch.setattr(SiteModule, "merge", third_fails)
    with pytest.raises(RuntimeError, match="injected"):
        adapted.merge()
    assert not adapted.merged and not any(s.merged for s in done)
    assert_base_bits(model, before)


def assert_no_merged_value(model, before: dict, unmerged: dict) -> None:
    """After remove(): every base tensor is its value before apply or its last unmerged value, cast.

    (remove() puts back the storage a wrapped module had at apply time when a
    conversion swapped it; other modules keep their converted tensors.)
    """
    state = model.state_dict()
    for key, value in before.items():
        now = state[key]
        assert torch.equal(now, value) or torch.equal(now, unmerged[key].to(now.dtype)), key


def test_model_to_while_merged():
    # A conversion while merged: the originals come back cast from their merge-time dtype, as .to() casts.
    model, state, adapted = adapted_model("llama", torch.float32)
    before = state.values
    adapted.merge()
    model.to(torch.bfloat16)
    adapted.unmerge()
    assert_base_bits(model, before, torch.bfloat16)
    model.float()  # unmerged: exact, now the bf16-rounded originals in fp32
    rounded = {k: v.to(torch.bfloat16).float() for k, v in before.items()}
    assert_base_bits(model, rounded)
    adapted.merge()
    merged = changed(model, rounded)
    model.half()
    model.float()
    adapted.unmerge()
    # Merged tensors come back from their merge-time fp32 originals, untouched by the fp16 round
    # trip; the others went through it.
    assert len(merged) == 19  # q, v: weight and bias; k: weight and bias; o, up, down; embed_tokens
    assert_base_bits(model, {k: v if k in merged else v.half().float() for k, v in rounded.items()})
    unmerged = {k: v.detach().clone() for k, v in model.state_dict().items() if k in before}
    adapted.merge()
    model.to(torch.float16)
    adapted.remove()
    assert_no_merged_value(model, before, unmerged)
    # Converted behind the site's back (the base module alone): the same.
    model, state, adapted = adapted_model("llama", torch.float32)
    before = state.values
    adapted.merge()
    q = adapted._patch.sites["model.layers.1.self_attn.q_proj"]
    q.base.to(torch.float16)
    adapted.unmerge()
    assert torch.equal(q.base.weight, before["model.layers.1.self_attn.q_proj.weight"].half())
    assert torch.equal(q.base.bias, before["model.layers.1.self_attn.q_proj.bias"].half())
    adapted.remove()
    assert_no_merged_value(model, before, before)


def test_keep_modes_and_what_they_cost():
    model, state, adapted = adapted_model("llama", torch.bfloat16)
    before = state.values
    adapted.use("plain_t")  # q and v of both layers: weight and bias rewritten whole
    sites = [adapted._patch.sites[f"model.layers.{i}.self_attn.{m}"] for i in range(2) for m in ("q_proj", "v_proj")]
    whole = sum(p.numel() * p.element_size() for s in sites for p in (s.base.weight, s.base.bias))
    report = adapted.merge()
    assert report["kept_bytes"] == whole and report["keep"] == "device"
    assert all(t.device == s.base.weight.device for s in sites for t in s._merged.dense.values())
    adapted.unmerge()
    report = adapted.merge(keep="cpu")
    assert report["kept_bytes"] == whole
    assert all(t.device.type == "cpu" for s in sites for t in s._merged.dense.values())
    adapted.unmerge()
    assert_base_bits(model, before)
    # No copies: only a snapshot of the factors is kept, and the weights come back within rounding.
    report = adapted.merge(keep="none")
    assert report["kept_bytes"] == sum(p.numel() * p.element_size() for p in adapted.delta_parameters("plain").values())
    adapted.unmerge()
    # Within one bf16 rounding step of the merged values (O(1) here), not of the smaller originals.
    for key, value in before.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=2 ** -7, rtol=0)
    # Sparse-only targets keep k entries and positions, not the tensor, and are exact in every mode.
    adapted.use("sp_t")
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in before}
    report = adapted.merge(keep="none")
    assert changed(model, before) == {f"model.layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj.weight", "mlp.up_proj.weight", "self_attn.k_proj.bias")}
    k = sum(v.numel() for v in adapted.delta_parameters("sp").values())
    k += sum(v.numel() for v in adapted.delta_parameters("spb").values())
    assert report["kept_bytes"] == k * (2 + 8)  # a bf16 entry and an int64 position each
    adapted.unmerge()
    assert_base_bits(model, before)


def test_bad_keep_and_sites_that_must_not_merge():
    model, state, adapted = adapted_model("llama", torch.float32)
    before = state.values
    with pytest.raises(RuntimeApplyError, match="keep mode 'gpu'") as info:
        adapted.merge(keep="gpu")
    assert info.value.diagnostics[0].obj == "gpu"
    assert not adapted.merged and not changed(model, before)
    # A base weight the user unfroze trains: unmerging would put back its pre-merge values.
    v0 = model.model.layers[0].self_attn.v_proj.weight
    v0.requires_grad_(True)
    adapted.use("plain_t")
    report = adapted.merge()
    assert "requires_grad" in report["not_merged"]["model.layers.0.self_attn.v_proj"]
    adapted.unmerge()
    v0.requires_grad_(False)
    adapted.remove()
    # A tune delta's copy in the slot: merging would change what that delta trains and saves.
    model = llama()
    tuned = adaptlang.apply(model, "adaptlang 1\nlora l {\n    on layers[0].self_attn.q_proj\n    rank 2\n}\n"
                                   "tune t {\n    params layers[0].self_attn.q_proj.weight\n}\ntask both = l + frozen(t)\n")
    randomize(tuned, "l")
    copy = tuned.delta_parameters("t")["model.layers.0.self_attn.q_proj/weight"].detach().clone()
    report = tuned.merge()
    assert "tune" in report["not_merged"]["model.layers.0.self_attn.q_proj"] and not report["merged"]
    assert torch.equal(tuned.delta_parameters("t")["model.layers.0.self_attn.q_proj/weight"], copy)
