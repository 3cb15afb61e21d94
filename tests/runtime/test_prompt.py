"""Prompt tuning: PEFT fidelity (causal LM, T5), init modes, BERT extras, hook hygiene."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

import adaptlang
from adaptlang.errors import RuntimeApplyError

PROMPT = """adaptlang 1
prompt p {{
    tokens {n}
    init   {init}
}}
"""

TWO_TASKS = """adaptlang 1
prompt p {
    tokens 3
}
lora l {
    on   layers[*].self_attn.q_proj
    rank 2
}
task with_prompt = p
task plain       = l
"""


def peft_prompt_model(model, task_type, n, **kwargs):
    """PEFT prompt tuning on a deep copy of ``model``."""
    config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=n, **kwargs)
    return get_peft_model(copy.deepcopy(model), config)


def copy_prompt_into_peft(peft_model, adapted) -> torch.nn.Parameter:
    """Copies our prompt vectors into PEFT's prompt encoder; returns PEFT's weight.

    For encoder-decoder models PEFT allocates one set of virtual tokens per
    transformer submodule (encoder, decoder) but prompt tuning prepends only
    the first ``num_virtual_tokens`` rows to the encoder input
    (``PeftModelForSeq2SeqLM.forward``), so only those rows are compared.
    """
    weight = peft_model.prompt_encoder["default"].embedding.weight
    ours = adapted.delta_parameters("p")
    (value,) = ours.values()
    with torch.no_grad():
        weight[: value.shape[0]].copy_(value)
    return weight


def test_causal_lm_outputs_and_grads_match_peft(rt):
    model = rt.tiny_llama()
    ref = peft_prompt_model(model, TaskType.CAUSAL_LM, 5)
    adapted = adaptlang.apply(model, PROMPT.format(n=5, init="random"))
    ref_weight = copy_prompt_into_peft(ref, adapted)
    batch = rt.lm_batch()
    ours = adapted(**batch)
    theirs = ref(**batch)
    assert ours.logits.shape == theirs.logits.shape == (2, 12, 64)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
    ours.loss.backward()
    theirs.loss.backward()
    (name, param), = adapted.trainable_parameters()
    assert name == "adaptlang_prompts.p.weight"
    torch.testing.assert_close(param.grad, ref_weight.grad, atol=1e-5, rtol=0)
    n_ref = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert param.numel() == n_ref == 5 * 32


def test_positional_call_and_explicit_positions_match_default(rt):
    model = rt.tiny_llama()
    adapted = adaptlang.apply(model, PROMPT.format(n=4, init="random"))
    batch = rt.lm_batch()
    expected = adapted(**batch).logits
    positional = adapted(batch["input_ids"], batch["attention_mask"]).logits
    positions = torch.arange(7).expand(2, 7)
    explicit = adapted(**batch, position_ids=positions).logits
    torch.testing.assert_close(positional, expected, atol=0, rtol=0)
    torch.testing.assert_close(explicit, expected, atol=1e-6, rtol=0)


def test_text_init_matches_peft_text_init(rt, tmp_path):
    tok = rt.word_tokenizer(tmp_path)
    model = rt.tiny_llama()
    text = "answer the question :"
    ref = peft_prompt_model(model, TaskType.CAUSAL_LM, 6, prompt_tuning_init=PromptTuningInit.TEXT,
                            prompt_tuning_init_text=text, tokenizer_name_or_path=str(tmp_path / "tok"))
    adapted = adaptlang.apply(model, PROMPT.format(n=6, init=f'text "{text}"'), tokenizer=tok)
    (ours,) = adapted.delta_parameters("p").values()
    theirs = ref.prompt_encoder["default"].embedding.weight
    assert torch.equal(ours.detach(), theirs.detach())
    ids = tok(text)["input_ids"]  # 4 tokens, repeated to 6
    expected = model.get_input_embeddings().weight[(ids * 2)[:6]]
    assert torch.equal(ours.detach(), expected.detach())


def test_text_init_without_tokenizer_names_delta_and_changes_nothing(rt):
    model = rt.tiny_llama()
    before = rt.capture_state(model)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, PROMPT.format(n=4, init='text "answer"'))
    message = str(info.value)
    assert "'p'" in message and "tokenizer" in message
    rt.assert_same_state(model, before)


def test_vocab_init_copies_seeded_vocabulary_rows(rt):
    model = rt.tiny_llama()
    table = model.get_input_embeddings().weight.detach().clone()
    first = adaptlang.apply(model, PROMPT.format(n=8, init="vocab"), seed=3)
    (rows,) = first.delta_parameters("p").values()
    rows = rows.detach().clone()
    first.remove()
    for row in rows:
        assert (table == row).all(dim=1).any(), "every prompt row is a vocabulary row"
    again = adaptlang.apply(model, PROMPT.format(n=8, init="vocab"), seed=3)
    assert torch.equal(next(iter(again.delta_parameters("p").values())).detach(), rows)


def test_t5_prompt_acts_on_encoder_input_like_peft(rt):
    model = rt.tiny_t5()
    ref = peft_prompt_model(model, TaskType.SEQ_2_SEQ_LM, 4)
    adapted = adaptlang.apply(model, PROMPT.format(n=4, init="random"))
    copy_prompt_into_peft(ref, adapted)
    gen = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(1, 64, (2, 6), generator=gen),
             "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "labels": torch.randint(1, 64, (2, 5), generator=gen)}
    ours = adapted(**batch)
    theirs = ref(**batch)
    assert ours.logits.shape == (2, 5, 64)  # decoder length unchanged
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)


def test_bert_prefixes_token_types_mask_and_mlm_labels(rt):
    model = rt.tiny_bert()
    ref = copy.deepcopy(model)
    adapted = adaptlang.apply(model, PROMPT.format(n=3, init="random"))
    (prompt,) = adapted.delta_parameters("p").values()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 64, (2, 5), generator=gen)
    types = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    mask = torch.ones(2, 5, dtype=torch.long)
    labels = torch.full((2, 5), -100).index_fill(1, torch.tensor([2]), 7)
    ours = adapted(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    with torch.no_grad():
        embeds = torch.cat([prompt.expand(2, 3, 32), ref.bert.embeddings.word_embeddings(ids)], dim=1)
        expected = ref(inputs_embeds=embeds, attention_mask=torch.ones(2, 8, dtype=torch.long),
                       token_type_ids=torch.cat([torch.zeros(2, 3, dtype=torch.long), types], 1),
                       labels=torch.cat([torch.full((2, 3), -100), labels], 1))
    assert ours.logits.shape == (2, 8, 64)
    torch.testing.assert_close(ours.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.loss, expected.loss, atol=1e-6, rtol=0)


def test_task_without_prompt_leaves_inputs_alone(rt):
    model = rt.tiny_llama()
    batch = rt.lm_batch()
    base = model(**batch).logits
    adapted = adaptlang.apply(model, TWO_TASKS, task="plain")
    torch.testing.assert_close(adapted(**batch).logits, base, atol=0, rtol=0)
    with adapted.use("with_prompt"):
        assert adapted(**batch).logits.shape == (2, 10, 64)
    assert adapted.active_task == "plain"
    assert adapted(**batch).logits.shape == (2, 7, 64)


def test_remove_takes_hook_and_prompt_module_off(rt):
    model = rt.tiny_llama()
    before = rt.capture_state(model)
    adapted = adaptlang.apply(model, TWO_TASKS, task="with_prompt")
    assert hasattr(model, "adaptlang_prompts") and len(model._forward_pre_hooks) == 1
    adapted.remove()
    assert not hasattr(model, "adaptlang_prompts")
    rt.assert_same_state(model, before)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sequence_classification_pools_the_last_real_token_with_right_padding(rt, family):
    """Decoder-only classifiers pool the rightmost non-pad token of ``input_ids``; a prompt must not move it.

    Reference: the prompt put in front by hand, the base model's hidden
    states, and the score head at each row's last real token (what HF pools
    for ``input_ids``). PEFT 0.21.2 pools the last position instead, a pad
    on right-padded rows (its logits differ there).
    """
    from transformers import (GPT2Config, GPT2ForSequenceClassification, LlamaConfig,
                              LlamaForSequenceClassification)

    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, num_labels=3)).eval()
    else:
        model = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=0, num_labels=3, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    reference = copy.deepcopy(model)
    adapted = adaptlang.apply(model, PROMPT.format(n=3, init="random"))
    (prompt,) = adapted.delta_parameters("p").values()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13], [0, 0, 4, 5, 6]])  # right, none, left
    mask = (ids != 0).long()
    labels = torch.tensor([0, 2, 1])
    ours = adapted(input_ids=ids, attention_mask=mask, labels=labels)
    with torch.no_grad():
        embeds = torch.cat([prompt.expand(3, -1, -1), reference.get_input_embeddings()(ids)], 1)
        full = torch.cat([torch.ones(3, 3, dtype=torch.long), mask], 1)
        body = getattr(reference, reference.base_model_prefix)  # default positions, as the call passes none
        hidden = body(inputs_embeds=embeds, attention_mask=full).last_hidden_state
        last = torch.tensor([3 + 2, 3 + 4, 3 + 4])
        want = reference.score(hidden)[torch.arange(3), last]
    torch.testing.assert_close(ours.logits, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, torch.nn.functional.cross_entropy(want, labels), atol=1e-5, rtol=0)


def test_prompt_and_input_past_the_position_table_is_refused_clearly(rt):
    model = rt.tiny_gpt2()  # n_positions 64
    adapted = adaptlang.apply(model, PROMPT.format(n=60, init="random"))
    assert adapted(input_ids=torch.ones(1, 4, dtype=torch.long)).logits.shape == (1, 64, 64)
    with pytest.raises(RuntimeApplyError, match="embeds at most 64 positions"):
        adapted(input_ids=torch.ones(1, 5, dtype=torch.long))
