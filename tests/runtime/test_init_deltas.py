"""``Adapted.init_deltas()`` on one process: the meta-device recipe equals ``apply`` on the real model.

Recipe: build on the meta device, ``apply``, ``to_empty``, load the base
checkpoint, ``init_deltas()``. Each case compares, bit for bit, every entry of
the model's state dict, every task's bundle tensors, the tune tensors kept
outside the module tree, and every task's logits with ``apply(real model)``
at the same seed. (Sharded, on two ranks: ``tests/distributed/test_meta_recipe.py``.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adaptlang
from adaptlang.errors import RuntimeApplyError

SEED = 7

CASES = {
    "lora": "lora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 4\n alpha 8 }",
    "gaussian_rslora_bias": "lora a { on layers[*].mlp.up_proj\n rank 4\n init gaussian\n variant rslora\n bias true }",
    "embedding_lora": "lora a { on embed_tokens\n rank 2 }",
    "dora": "lora a { on layers[*].self_attn.*_proj\n rank 4\n variant dora\n bias true }",
    "ia3": "ia3 a { on layers[*].{self_attn.k_proj, mlp.down_proj}\n feedforward true for mlp.down_proj }",
    "adapter": "adapter a { after layers[*].mlp\n size 8\n act gelu }\nadapter b { before layers[0].self_attn.o_proj\n size 4 }",
    "prompt_random": "prompt a { tokens 3\n init random }",
    "prompt_vocab": "prompt a { tokens 5\n init vocab }",
    "prompt_text": 'prompt a { tokens 6\n init text "answer the question :" }',
    # Two copies of one slot, a task with neither: the slot holds 'a''s copy when loading.
    "tune": "tune a { params lm_head.weight, norm }\ntune b { params lm_head.weight }\nia3 c { on lm_head }\n"
            "task ta = a\ntask tb = b\ntask tc = c",
    "tune_not_active": "ia3 c { on lm_head }\ntune a { params lm_head.weight, layers[0].mlp.up_proj }\n"
                       "task tc = c\ntask ta = a + c",
    "quantized_lora": "quantize nf4 { on layers[*].mlp.down_proj\n block 32 }\n"
                      "lora a { on layers[*].mlp.down_proj\n rank 4 }",
    "mixed": "lora a { on layers[*].self_attn.q_proj\n rank 2 }\nadapter b { after layers[-1].mlp\n size 4 }\n"
             "prompt p { tokens 2\n init vocab }\ntask one = a + b\ntask two = 0.5 * a + p",
}


def meta_twin(real: nn.Module) -> nn.Module:
    """The same architecture built on the meta device (no values)."""
    with torch.device("meta"):
        return type(real)(real.config)


def reset_rotary(model: nn.Module) -> None:
    """Llama's rotary frequencies are buffers no checkpoint holds: ``to_empty`` left them unset."""
    rotary = model.model.rotary_emb
    fresh = type(rotary)(model.config)  # on CPU: computed from the config
    for name, value in fresh.named_buffers():
        rotary.get_buffer(name).copy_(value)


def recipe(real: nn.Module, spec: str, tokenizer=None, seed: int = SEED):
    """meta build -> apply -> to_empty -> load the real model's weights -> init_deltas; returns the handle."""
    checkpoint = {k: v.clone() for k, v in real.state_dict().items()}
    model = meta_twin(real)
    adapted = adaptlang.apply(model, spec, seed=seed, tokenizer=tokenizer)
    model.to_empty(device="cpu")
    loaded = model.load_state_dict(checkpoint, strict=False)
    # Every checkpoint key found its tensor; only delta keys are left over.
    assert loaded.unexpected_keys == []
    assert all(".parts." in k or k.startswith("adaptlang_prompts.") for k in loaded.missing_keys)
    reset_rotary(model)
    counts = adapted.init_deltas(tokenizer=tokenizer)
    return adapted, counts


def outside(adapted) -> list[torch.Tensor]:
    """The tune originals and copies, wherever they are now (slot or outside), in a fixed order."""
    tune = adapted._patch.tune
    found = []
    for key in tune.originals:
        found.append(adapted.model.get_parameter(f"{key[0]}.{key[1]}") if tune.holder[key] is None
                     else tune.originals[key])
        found += [tune.live(delta, key) for delta in tune.copies if key in tune.copies[delta]]
    return found


def assert_same(ref, got, batch) -> None:
    """Bit-for-bit: state dicts, bundles of every task, tune tensors outside the tree, logits per task."""
    want, have = ref.model.state_dict(), got.model.state_dict()
    assert list(want) == list(have)
    assert [k for k in want if not torch.equal(want[k], have[k])] == []
    for task in ref.tasks:
        a, b = ref.adapter_state_dict(task), got.adapter_state_dict(task)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), task
    assert all(torch.equal(x, y) for x, y in zip(outside(ref), outside(got), strict=True))
    ref.model.eval()
    got.model.eval()
    for task in ref.tasks:
        ref.use(task)
        got.use(task)
        with torch.no_grad():
            assert torch.equal(ref(**batch).logits, got(**batch).logits), task


@pytest.mark.parametrize("case", list(CASES))
def test_recipe_equals_apply_on_the_real_model(rt, tmp_path, case):
    spec = "adaptlang 1\n" + CASES[case] + "\n"
    tok = rt.word_tokenizer(tmp_path) if case == "prompt_text" else None
    real = rt.tiny_llama()
    got, counts = recipe(real, spec, tok)
    ref = adaptlang.apply(real, spec, seed=SEED, tokenizer=tok)
    assert counts == {d: sum(p.numel() for p in ref.delta_parameters(d).values()) for d in ref._patch.delta_params}
    assert_same(ref, got, rt.lm_batch())


def test_the_seed_decides_the_values(rt):
    # Otherwise the comparisons above would hold for any fixed values.
    spec = "adaptlang 1\n" + CASES["mixed"] + "\n"
    real = rt.tiny_llama()
    got, _ = recipe(real, spec, seed=SEED + 1)
    ref = adaptlang.apply(real, spec, seed=SEED)
    a, b = ref.adapter_state_dict("one"), got.adapter_state_dict("one")
    assert not torch.equal(a["a/model.layers.0.self_attn.q_proj/lora_A"], b["a/model.layers.0.self_attn.q_proj/lora_A"])


def test_again_after_training_gives_the_initial_values_back(rt):
    # On a model applied with values (nothing pending): tune copies start again from the
    # untouched original, not from the trained copy in the slot.
    spec = "adaptlang 1\n" + CASES["tune"] + "\nlora l { on layers[*].self_attn.q_proj\n rank 2 }\ntask tl = a + l\n"
    real = rt.tiny_llama()
    fresh = adaptlang.apply(rt.tiny_llama(), spec, seed=SEED, task="tl")
    adapted = adaptlang.apply(real, spec, seed=SEED, task="tl")
    opt = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        adapted(**rt.lm_batch()).loss.backward()
        opt.step()
    assert not torch.equal(adapted.adapter_state_dict()["a/lm_head/weight"],
                           fresh.adapter_state_dict()["a/lm_head/weight"])
    adapted.init_deltas()
    assert_same(fresh, adapted, rt.lm_batch())


def test_refused_before_to_empty(rt):
    model = meta_twin(rt.tiny_llama())
    adapted = adaptlang.apply(model, "adaptlang 1\n" + CASES["lora"] + "\n")
    with pytest.raises(RuntimeApplyError, match="still on the meta device") as err:
        adapted.init_deltas()
    assert "to_empty" in err.value.diagnostics[0].hint


def test_text_prompt_needs_the_tokenizer_again(rt, tmp_path):
    real = rt.tiny_llama()
    spec = "adaptlang 1\n" + CASES["prompt_text"] + "\n"
    model = meta_twin(real)
    adapted = adaptlang.apply(model, spec, tokenizer=rt.word_tokenizer(tmp_path))
    model.to_empty(device="cpu")
    with pytest.raises(RuntimeApplyError, match="needs a tokenizer") as err:
        adapted.init_deltas()
    assert "init_deltas(tokenizer=tok)" in err.value.diagnostics[0].hint


class ScaledEmbedding(nn.Embedding):
    """An embedding whose rows are scaled in its forward (as Gemma's): not a plain lookup."""

    def forward(self, ids):
        return super().forward(ids) * 2.0


def test_prompt_rows_of_a_non_plain_embedding_are_refused(rt):
    real = rt.tiny_llama()
    model = meta_twin(real)
    with torch.device("meta"):
        model.model.embed_tokens = ScaledEmbedding(64, 32)
    adapted = adaptlang.apply(model, "adaptlang 1\n" + CASES["prompt_vocab"] + "\n")
    model.to_empty(device="cpu")
    with pytest.raises(RuntimeApplyError, match="ScaledEmbedding, whose forward is not nn.Embedding's"):
        adapted.init_deltas()
    assert adaptlang.apply(meta_twin(real), "adaptlang 1\n" + CASES["prompt_random"] + "\n") is not None


def test_sparse_on_the_meta_device_is_refused_clearly(rt):
    model = meta_twin(rt.tiny_llama())
    with pytest.raises(RuntimeApplyError, match="a model on the meta device has none") as err:
        adaptlang.apply(model, "adaptlang 1\nsparse s { on layers[*].mlp.down_proj\n density 1% }\n")
    assert "weights loaded" in err.value.diagnostics[0].hint
    assert not any(".parts." in k for k in model.state_dict())  # the model is as it was


def test_sparse_values_go_back_to_zero_and_keep_their_positions(rt):
    spec = "adaptlang 1\nsparse s { on layers[*].mlp.down_proj\n density 2% }\n"
    adapted = adaptlang.apply(rt.tiny_llama(), spec, seed=SEED)
    indices = {k: v.clone() for k, v in adapted.delta_buffers("s").items()}
    with torch.no_grad():
        for p in adapted.delta_parameters("s").values():
            p.add_(1.0)
    adapted.init_deltas()
    assert all(torch.equal(p, torch.zeros_like(p)) for p in adapted.delta_parameters("s").values())
    assert all(torch.equal(indices[k], v) for k, v in adapted.delta_buffers("s").items())


def test_refused_while_merged(rt):
    adapted = adaptlang.apply(rt.tiny_llama(), "adaptlang 1\n" + CASES["lora"] + "\n")
    adapted.merge()
    with pytest.raises(RuntimeApplyError, match="merged"):
        adapted.init_deltas()


def test_tune_tensors_left_on_meta_are_refused(rt):
    # load_state_dict(assign=True) fills the slots (here: the copy) but not the original kept outside the tree.
    real = rt.tiny_llama()
    model = meta_twin(real)
    adapted = adaptlang.apply(model, "adaptlang 1\ntune a { params lm_head.weight }\n")
    model.load_state_dict(real.state_dict(), strict=False, assign=True)
    with pytest.raises(RuntimeApplyError, match="still on the meta device"):
        adapted.init_deltas()


def test_quantized_dora_starts_again_from_the_dequantized_weight(rt):
    spec = ("adaptlang 1\nquantize nf4 { on layers[*].mlp.down_proj\n block 32 }\n"
            "lora a { on layers[*].mlp.down_proj\n rank 4\n variant dora }\n")
    fresh = adaptlang.apply(rt.tiny_llama(), spec, seed=SEED)
    adapted = adaptlang.apply(rt.tiny_llama(), spec, seed=SEED)
    with torch.no_grad():
        for p in adapted.delta_parameters("a").values():
            p.mul_(3.0).add_(1.0)
    adapted.init_deltas()
    assert_same(fresh, adapted, rt.lm_batch())
