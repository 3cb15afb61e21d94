"""Bundles of deltas on tied tensors: a shared copy is stored once and loads back shared.

The base is a 2-layer Llama with ``lm_head.weight`` tied to the embedding;
"the same" means bit-identical logits in fp32 on a fresh base built from
the same seed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

import adaptlang
from adaptlang.errors import AdaptError, BundleError

SPEC = """adaptlang 1
tune emb  { params @embed, @head }
tune head { params @head }
sparse sp { on @embed, @head
    density 5% }
task shared = emb
task untied = head
task sparse = sp
"""
IDS = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def tied_llama(seed: int = 0, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def logits(adapted, task):
    adapted.use(task)
    with torch.no_grad():
        return adapted(input_ids=IDS).logits


def test_save_and_load_onto_a_fresh_tied_base_give_identical_logits(tmp_path):
    adapted = adaptlang.apply(tied_llama(), SPEC)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for delta in ("emb", "head", "sp"):
            for p in adapted.delta_parameters(delta).values():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    want = {task: logits(adapted, task) for task in adapted.tasks}
    paths = adapted.save(tmp_path)
    keys = {}
    for path in paths:
        with safe_open(str(path), "pt") as handle:
            keys[path.stem] = sorted(handle.keys())
    # The shared copy and the shared sparse values are stored once, under their site.
    assert keys == {"shared": ["emb/model.embed_tokens/weight"], "untied": ["head/lm_head/weight"],
                    "sparse": ["sp/model.embed_tokens/indices", "sp/model.embed_tokens/values"]}
    fresh_model = tied_llama()
    fresh = adaptlang.load(fresh_model, paths)
    for task, expected in want.items():
        assert torch.equal(logits(fresh, task), expected), task
    fresh.use("shared")
    assert fresh_model.lm_head.weight is fresh_model.model.embed_tokens.weight
    fresh.use("untied")
    assert fresh_model.lm_head.weight is not fresh_model.model.embed_tokens.weight
    fresh.remove()
    assert fresh_model.lm_head.weight is fresh_model.model.embed_tokens.weight


def test_a_tied_bundle_is_refused_on_an_untied_base(tmp_path):
    adapted = adaptlang.apply(tied_llama(), SPEC)
    paths = adapted.save(tmp_path, tasks=["shared"])
    untied = tied_llama(tied=False)
    state = copy.deepcopy(untied.state_dict())
    with pytest.raises(AdaptError, match="in the plan 'model.embed_tokens.weight' is tied to lm_head.weight; "
                                         "in this model it is not tied"):
        adaptlang.load(untied, paths)
    assert all(torch.equal(v, state[k]) for k, v in untied.state_dict().items())


def test_peft_export_refuses_re_trained_tied_tensors(tmp_path):
    adapted = adaptlang.apply(tied_llama(), SPEC)
    for task in ("shared", "sparse"):
        with pytest.raises(BundleError):
            adapted.export_peft(tmp_path / task, task)
