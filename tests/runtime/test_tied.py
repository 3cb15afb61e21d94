"""Tied weights at run time: a re-trained tied tensor is one copy at every name the plan shares it with.

The model is a 2-layer Llama whose ``lm_head.weight`` *is* ``model.embed_tokens.weight``;
the checks are the math of a tied head: logits are the final hidden states
times the (one) embedding matrix transposed, and embedding lookups are rows
of the same matrix.
"""

from __future__ import annotations

import pytest
import torch

import adaptlang
from adaptlang.errors import RuntimeApplyError

SPEC = """adaptlang 1
tune emb  { params @embed, @head }
tune head { params lm_head.weight }
sparse sp { on @embed, @head
    density 5% }
sparse sph { on @head
    density 5% }
lora l { on layers[*].self_attn.q_proj
    rank 2 }
task shared  = emb
task untied  = head
task sparse  = sp
task sparse_head = sph
task plain   = l
"""


def tied_llama(seed: int = 0, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def sgd(adapted, steps: int = 3, lr: float = 0.5) -> None:
    opt = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        adapted(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()


def head_and_lookup(adapted):
    """(logits, final hidden states, embedding lookup of IDS), no grad."""
    with torch.no_grad():
        out = adapted(input_ids=IDS, output_hidden_states=True)
        return out.logits, out.hidden_states[-1], adapted.model.model.embed_tokens(IDS)


def test_tuning_both_names_trains_one_copy_used_at_both(rt):
    model = tied_llama()
    original = model.lm_head.weight
    values = original.detach().clone()
    adapted = adaptlang.apply(model, SPEC, task="shared")
    copy = model.model.embed_tokens.weight
    assert model.lm_head.weight is copy and copy is not original
    trainable = adapted.trainable_parameters()
    assert [p for _, p in trainable] == [copy]  # once, though it sits in two slots
    assert sum(p.numel() for _, p in trainable) == adapted.plan.task("shared")["trainable_params"] == 128 * 64
    sgd(adapted)
    assert (copy.detach() - values).abs().max() > 1e-3  # trained, by gradients from both uses
    logits, hidden, lookup = head_and_lookup(adapted)
    torch.testing.assert_close(logits, hidden @ copy.detach().T, atol=1e-5, rtol=1e-5)
    assert torch.equal(lookup, copy.detach()[IDS])
    assert torch.equal(original.detach(), values)  # the base tensor never moved


def test_tuning_one_name_unties_and_the_other_keeps_the_original(rt):
    model = tied_llama()
    original = model.lm_head.weight
    values = original.detach().clone()
    adapted = adaptlang.apply(model, SPEC, task="untied")
    sgd(adapted)
    copy = model.lm_head.weight
    assert copy is not original and model.model.embed_tokens.weight is original
    assert (copy.detach() - values).abs().max() > 1e-3
    logits, hidden, lookup = head_and_lookup(adapted)
    torch.testing.assert_close(logits, hidden @ copy.detach().T, atol=1e-5, rtol=1e-5)
    assert torch.equal(lookup, values[IDS]) and torch.equal(original.detach(), values)


def test_switching_and_remove_restore_the_tie_bit_for_bit(rt):
    model = tied_llama()
    original = model.lm_head.weight
    before = rt.capture_state(model)
    adapted = adaptlang.apply(model, SPEC, task="shared")
    sgd(adapted)
    adapted.use("untied")
    sgd(adapted)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    adapted.use("plain")  # no tune delta: the original tensor is back at both names
    assert model.lm_head.weight is model.model.embed_tokens.weight is original
    adapted.use("shared")
    assert model.lm_head.weight is model.model.embed_tokens.weight is not original
    adapted.remove()
    assert model.lm_head.weight is model.model.embed_tokens.weight is original
    rt.assert_same_state(model, before)  # same objects, bit-identical values, flags


def test_sparse_on_both_names_is_one_set_of_values_seen_by_both_modules(rt):
    model = tied_llama()
    original = model.lm_head.weight
    values = original.detach().clone()
    adapted = adaptlang.apply(model, SPEC, task="sparse")
    (name, trained), = adapted.trainable_parameters()
    assert trained.numel() == adapted.plan.task("sparse")["trainable_params"] == round(0.05 * 128 * 64)
    sgd(adapted)
    assert trained.detach().abs().max() > 1e-3
    part = adapted.model.lm_head.parts["sp"]
    assert adapted.model.model.embed_tokens.parts["sp"] is part
    dense = values.clone().view(-1).index_add(0, part.indices, trained.detach()).view_as(values)
    logits, hidden, lookup = head_and_lookup(adapted)
    torch.testing.assert_close(logits, hidden @ dense.T, atol=1e-5, rtol=1e-5)
    assert torch.equal(lookup, dense[IDS])
    # One bundle entry, at the site; the other slot runs the same part.
    assert set(adapted.bundle_tensors("sparse")) == {"sp/model.embed_tokens/values", "sp/model.embed_tokens/indices"}
    # Folding into the tied tensor would change the other module: not merged, reported, nothing moved.
    report = adapted.merge()
    assert report["merged"] == [] and set(report["not_merged"]) == {"model.embed_tokens", "lm_head"}
    assert set(report["not_merged"].values()) == {"the base weight is tied to another module"}
    assert torch.equal(original.detach(), values)
    adapted.unmerge()


def test_sparse_on_one_name_unties_it(rt):
    model = tied_llama()
    values = model.lm_head.weight.detach().clone()
    adapted = adaptlang.apply(model, SPEC, task="sparse_head")
    sgd(adapted)
    (_, trained), = adapted.trainable_parameters()
    part = adapted.model.lm_head.parts["sph"]
    dense = values.clone().view(-1).index_add(0, part.indices, trained.detach()).view_as(values)
    logits, hidden, lookup = head_and_lookup(adapted)
    torch.testing.assert_close(logits, hidden @ dense.T, atol=1e-5, rtol=1e-5)
    assert torch.equal(lookup, values[IDS])  # the embedding keeps the base values, as the plan says
    assert adapted.merge()["not_merged"] == {"lm_head": "the base weight is tied to another module"}


def test_lora_acts_on_the_module_and_leaves_the_tied_tensor_alone(rt):
    # As PEFT does by default: LoRA on the head changes the head's map; the embedding keeps the base rows.
    model = tied_llama()
    values = model.lm_head.weight.detach().clone()
    adapted = adaptlang.apply(model, "adaptlang 1\nlora h { on @head\n rank 2 }\n")
    sgd(adapted)
    part = adapted.model.lm_head.parts["h"]
    logits, hidden, lookup = head_and_lookup(adapted)
    lora = (part.lora_B @ part.lora_A).detach() * part.scaling
    torch.testing.assert_close(logits, hidden @ (values + lora).T, atol=1e-5, rtol=1e-5)
    assert torch.equal(lookup, values[IDS])
    assert adapted.model.lm_head.base.weight is adapted.model.model.embed_tokens.weight  # still tied
    assert list(adapted.merge()["not_merged"]) == ["lm_head"]


def test_merge_skips_a_tensor_tied_in_the_base_while_a_tune_copy_unties_it(rt):
    # The embedding's copy leaves the original only at lm_head, but the base tensor is still the embedding's.
    model = tied_llama()
    values = model.lm_head.weight.detach().clone()
    adapted = adaptlang.apply(model, "adaptlang 1\ntune e { params @embed }\nlora h { on @head\n rank 2 }\n"
                                     "task t = e + h\n")
    sgd(adapted)
    assert adapted.merge()["not_merged"] == {"lm_head": "the base weight is tied to another module"}
    assert torch.equal(model.lm_head.base.weight.detach(), values)


def test_mixed_batches_share_the_copy_and_refuse_rows_that_disagree(rt):
    model = tied_llama()
    adapted = adaptlang.apply(model, SPEC + "task shared2 = frozen(emb) + l\n", task="shared")
    sgd(adapted)
    with torch.no_grad():
        alone = {}
        for task in ("shared", "shared2", "sparse"):
            adapted.use(task)
            alone[task] = adapted(input_ids=IDS).logits
        adapted.use("shared")
        mixed = adapted(input_ids=IDS, tasks=["shared2", "shared"]).logits
        torch.testing.assert_close(mixed[0], alone["shared2"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[1], alone["shared"][1], atol=1e-5, rtol=1e-5)
        mixed = adapted(input_ids=IDS, tasks=["sparse", None]).logits  # the sparse rows: both modules
        torch.testing.assert_close(mixed[0], alone["sparse"][0], atol=1e-5, rtol=1e-5)
        with pytest.raises(RuntimeApplyError, match="re-trains existing parameters"):
            adapted(input_ids=IDS, tasks=["shared", None])


def test_a_plan_for_other_ties_is_refused_and_the_model_is_untouched(rt):
    untied_plan = adaptlang.compile(SPEC, model=tied_llama(tied=False))
    model = tied_llama()
    before = rt.capture_state(model)
    with pytest.raises(RuntimeApplyError, match="adding tune 'emb' failed at 'model.embed_tokens': in the plan "
                       "'model.embed_tokens.weight' is not tied; in this model it is tied to lm_head.weight"):
        adaptlang.apply(model, untied_plan)
    rt.assert_same_state(model, before)


def test_gpt2_bert_and_t5_tied_copies_sit_in_every_shared_slot(rt):
    gpt2 = rt.tiny_gpt2()
    adaptlang.apply(gpt2, "adaptlang 1\ntune e { params @embed, @head }\n")
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight and gpt2.lm_head.weight.requires_grad
    # BERT BitFit: the MLM decoder's bias is cls.predictions.bias; its copy must reach the decoder.
    bert = rt.tiny_bert()
    batch = {"input_ids": IDS % 64}
    base = bert(**batch).logits.detach()
    adapted = adaptlang.apply(bert, "adaptlang 1\ntune b { params **.bias }\n")
    assert bert.cls.predictions.decoder.bias is bert.cls.predictions.bias
    with torch.no_grad():
        bert.cls.predictions.bias.add_(1.0)
        torch.testing.assert_close(adapted(**batch).logits, base + 1.0, atol=1e-5, rtol=1e-5)
    t5 = rt.tiny_t5()
    adaptlang.apply(t5, "adaptlang 1\ntune e { params @embed, @head }\n")
    assert t5.lm_head.weight is t5.shared.weight and t5.shared.weight.requires_grad
    assert t5.encoder.embed_tokens.weight is t5.decoder.embed_tokens.weight
    assert not t5.encoder.embed_tokens.weight.requires_grad  # untied, as the plan says


def test_quantizing_a_weight_tied_in_this_model_is_refused(rt):
    # Quantizing frees the Parameter's storage, which the embedding still uses.
    plan = adaptlang.compile("adaptlang 1\nquantize int8 { on lm_head }\n", model=tied_llama(tied=False))
    model = tied_llama()
    before = rt.capture_state(model)
    with pytest.raises(RuntimeApplyError, match="'lm_head.weight' is tied to model.embed_tokens.weight"):
        adaptlang.apply(model, plan)
    rt.assert_same_state(model, before)
