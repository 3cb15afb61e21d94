"""Helpers shared by the soft-prompt generation tests: tiny decoder families, a prompt spec, decoding loops."""

from __future__ import annotations

import inspect

import torch

import adaptlang

__all__ = ["GREEDY", "IDS", "MASK", "MIXED", "PROMPT", "cache_keyword", "decoder_models", "greedy_steps",
           "mixed_setup", "sharpen", "tiny_mistral", "tiny_qwen2"]


PROMPT = "adaptlang 1\nprompt p {{\n    tokens {n}\n    init   random\n}}\n"
IDS = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
GREEDY = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)


def tiny_mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return MistralForCausalLM(cfg).eval()


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def decoder_models(rt):
    return {"llama": rt.tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "gpt2": rt.tiny_gpt2}


def sharpen(model, seed: int = 3) -> None:
    """Scales the output head up so greedy choices are decided by clear margins, not by rounding."""
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.mul_(8.0)


MIXED = """adaptlang 1
prompt short { tokens 3; init random }
prompt long  { tokens 5; init random }
lora l { on layers[*].self_attn.q_proj; rank 2 }
task a = short + l
task b = long
task c = l
"""


def cache_keyword(model) -> str:
    """The name this transformers release gives the KV cache argument (it was renamed)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_steps(call, ids, mask, steps, key=None):
    """Greedy decoding through ``call``: with a cache (``key`` names it) or recomputing every step."""
    cache = None
    tokens, logits = ids, []
    step_ids = ids
    for _ in range(steps):
        kwargs = {"input_ids": step_ids if key else tokens, "attention_mask": mask}
        if key:
            kwargs.update({key: cache, "use_cache": True})
        out = call(**kwargs)
        cache = out.past_key_values if key else None
        last = out.logits[:, -1]
        logits.append(last)
        step_ids = last.argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, step_ids], 1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], 1)
    return tokens, logits


def mixed_setup(rt, family):
    """A model with MIXED applied (LoRA on its query projection), prompts and LoRA made to matter.

    Returns:
        (model, adapted, tasks per row, ids (4, 5) with left padding, mask).
    """
    model = {"llama": rt.tiny_llama, "gpt2": rt.tiny_gpt2, "t5": rt.tiny_t5}[family]()
    target = {"llama": "layers[*].self_attn.q_proj", "gpt2": "h[*].attn.c_attn",
              "t5": "block[*].layer[0].SelfAttention.q"}[family]
    sharpen(model)
    adapted = adaptlang.apply(model, MIXED.replace("layers[*].self_attn.q_proj", target), task="c")
    with torch.no_grad():
        for name in ("short", "long"):
            for p in adapted.delta_parameters(name).values():
                p.mul_(3.0)
        for p in adapted.delta_parameters("l").values():
            p.normal_(0, 0.3)
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13], [0, 3, 4, 5, 6], [7, 8, 9, 10, 11]])
    return model, adapted, ["a", "b", None, "c"], ids, (ids != 0).long()
