"""Tied parameters in the plan: one site per tensor, shared or deliberately untied, said in JSON and summary.

The models are tiny and built on the meta device: the planner only reads
their signature. Numbers are pinned by hand: the tied Llama's embedding is
128 x 64 = 8,192 values (32,768 bytes in fp32).
"""

from __future__ import annotations

import json

import pytest
import torch

import adaptlang
from adaptlang.errors import BindError
from adaptlang.plan.plan import Plan
from adaptlang.plan.schema import find_schema_errors
from adaptlang.plan.signature import signature_of

EMB = 128 * 64  # the tied tensor's values
EMB_BYTES = 4 * EMB


def tied_llama(tied: bool = True):
    """A 2-layer Llama (hidden 64, vocab 128) on meta, its head tied to its embedding unless ``tied`` is False."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def llama_sig():
    return signature_of(tied_llama(), "tied-llama")


def compile_(text: str, sig) -> Plan:
    return adaptlang.compile("adaptlang 1\n" + text, model=sig)


def test_tuning_both_names_is_one_shared_site_counted_once(llama_sig):
    plan = compile_("tune emb { params embed_tokens.weight, lm_head.weight }\n", llama_sig)
    sites = plan.sites_of("emb")
    assert sites == [{"path": "model.embed_tokens", "param": "weight", "shape": [128, 64], "dtype": "float32",
                      "params": EMB, "shared_with": ["lm_head.weight"]}]
    task = plan.task("default")
    assert task["trainable_params"] == task["bundle_params"] == EMB
    # The copy replaces the tensor at both names: the base is held without it.
    assert task["memory"]["frozen_bytes"] == 4 * llama_sig.total_params - EMB_BYTES
    # Roles select the same two names: the same plan.
    by_role = compile_("tune emb { params @embed, @head }\n", llama_sig)
    assert by_role.to_json() == plan.to_json()
    assert "tied   tune 'emb': one trained copy at model.embed_tokens.weight and lm_head.weight (tied)" \
        in plan.summary()


def test_tuning_one_name_unties_it_and_the_plan_says_so(llama_sig):
    plan = compile_("tune head { params @head }\n", llama_sig)
    assert plan.sites_of("head") == [{"path": "lm_head", "param": "weight", "shape": [128, 64],
                                      "dtype": "float32", "params": EMB,
                                      "untied_from": ["model.embed_tokens.weight"]}]
    # The embedding still uses the original: nothing of the base is released.
    assert plan.task("default")["memory"]["frozen_bytes"] == 4 * llama_sig.total_params
    assert ("tune 'head': one trained copy at lm_head.weight; unties model.embed_tokens.weight, "
            "which keeps the frozen original") in plan.summary()


def test_sparse_shares_or_unties_like_tune(llama_sig):
    plan = compile_("sparse both { on @embed, @head\n density 1% }\nsparse head { on lm_head\n density 1% }\n",
                    llama_sig)
    both, head = plan.sites_of("both"), plan.sites_of("head")
    assert [s["path"] for s in both] == ["model.embed_tokens"] and both[0]["shared_with"] == ["lm_head.weight"]
    assert "untied_from" not in both[0]
    assert head[0]["path"] == "lm_head" and head[0]["untied_from"] == ["model.embed_tokens.weight"]
    assert both[0]["k"] == head[0]["k"] == 82 == plan.delta("both")["params"]  # round(0.01 * 8192)
    assert "sparse 'both': one set of sparse values at model.embed_tokens.weight and lm_head.weight" \
        in plan.summary()


def test_plan_json_with_ties_is_valid_deterministic_and_round_trips(llama_sig):
    text = "tune emb { params @embed, @head }\ntune head { params lm_head.weight }\ntask a = emb\ntask b = head\n"
    first = compile_(text, llama_sig)
    again = compile_(text, signature_of(tied_llama(), "tied-llama"))
    assert first.to_json() == again.to_json()
    assert find_schema_errors(json.loads(first.to_json())) == []
    assert Plan.from_json(first.to_json()).to_json() == first.to_json()


def test_untied_models_get_no_tie_fields_or_notes():
    sig = signature_of(tied_llama(tied=False), "llama")
    plan = compile_("tune head { params @head }\nsparse s { on @embed }\n", sig)
    assert all("shared_with" not in s and "untied_from" not in s
               for d in ("head", "s") for s in plan.sites_of(d))
    assert "tied" not in plan.summary()
    # The copy replaces lm_head.weight, which nothing else uses.
    assert plan.task("default")["memory"]["frozen_bytes"] == 4 * sig.total_params - EMB_BYTES


def test_two_deltas_may_untie_both_names_but_not_fill_one_slot_twice(llama_sig):
    plan = compile_("tune e { params @embed }\ntune h { params @head }\ntask t = e + h\n", llama_sig)
    task = plan.task("t")
    assert task["trainable_params"] == 2 * EMB  # two copies now: the tie is broken on purpose
    # Between them the copies fill every name: the original is released.
    assert task["memory"]["frozen_bytes"] == 4 * llama_sig.total_params - EMB_BYTES
    with pytest.raises(BindError) as err:
        compile_("tune both { params @embed, @head }\ntune h { params @head }\ntask t = both + h\n", llama_sig)
    assert "uses two tune deltas, 'both' and 'h', on 'lm_head.weight'" in str(err.value)


def test_quantizing_a_tied_weight_is_refused_with_its_location(llama_sig):
    with pytest.raises(BindError) as err:
        compile_("quantize nf4 { on lm_head }\n", llama_sig)
    diag = err.value.diagnostics[0]
    assert "'lm_head.weight' is tied to model.embed_tokens.weight and cannot be quantized" in diag.message
    assert (diag.span.file, diag.span.line, diag.span.col) == ("<string>", 2, 19)  # `lm_head` after "quantize nf4 { on "


def test_gpt2_bert_and_t5_ties():
    from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, T5Config,
                              T5ForConditionalGeneration)

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16))
        bert = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=64))
        t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                 num_decoder_layers=1, num_heads=4))
    site = compile_("tune h { params lm_head }\n", signature_of(gpt2)).sites_of("h")[0]
    assert (site["path"], site["untied_from"]) == ("lm_head", ["transformer.wte.weight"])
    # BERT's MLM decoder bias is tied to cls.predictions.bias: BitFit trains one copy used by the decoder.
    bitfit = compile_("tune b { params **.bias }\n", signature_of(bert))
    heads = [s for s in bitfit.sites_of("b") if s["path"].startswith("cls.predictions") and "transform" not in s["path"]]
    assert heads == [{"path": "cls.predictions", "param": "bias", "shape": [64], "dtype": "float32",
                      "params": 64, "shared_with": ["cls.predictions.decoder.bias"]}]
    # T5: @embed is `shared`; both stacks' embed_tokens are further names of the same tensor.
    site = compile_("tune e { params @embed, @head }\n", signature_of(t5)).sites_of("e")[0]
    assert site["path"] == "shared" and site["shared_with"] == ["lm_head.weight"]
    assert site["untied_from"] == ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
