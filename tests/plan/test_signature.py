"""Model signatures (``adaptlang.plan.signature``): widths, ties, families, fingerprints."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from torch import nn

from adaptlang.plan.models import load_model
from adaptlang.plan.signature import ModelSignature, ModuleInfo, ParamInfo, detect_family, signature_of


def widths(sig: ModelSignature, path: str) -> tuple[int | None, int | None]:
    info = sig.modules[path]
    return (info.in_features, info.out_features)


def test_llama_modules_params_and_widths(sig) -> None:
    s = sig("llama")
    assert s.name == "llama" and s.cls == "LlamaForCausalLM" and s.family == "llama"
    assert list(s.modules)[:3] == ["", "model", "model.embed_tokens"]  # named_modules() order
    q = s.modules["model.layers.0.self_attn.q_proj"]
    assert q.cls == "Linear" and "Linear" in q.bases and "Module" in q.bases
    assert q.params == (ParamInfo("weight", (4096, 4096), "float16"),)
    assert q.children == () and not q.is_list
    assert widths(s, "model.layers.0.mlp.up_proj") == (4096, 11008)
    assert widths(s, "model.layers.0.mlp.down_proj") == (11008, 4096)
    assert widths(s, "model.embed_tokens") == (32000, 4096)  # (num_embeddings, dim)
    assert widths(s, "model.norm") == (4096, 4096)  # an RMSNorm over d is (d, d)
    # Composites: in of the first leaf with widths, out of the last.
    assert widths(s, "model.layers.0.mlp") == (4096, 4096)
    assert widths(s, "model.layers.0.self_attn") == (4096, 4096)
    assert widths(s, "model.layers.0.mlp.act_fn") == (None, None)
    layers = s.modules["model.layers"]
    assert layers.is_list and layers.children == tuple(str(i) for i in range(32))
    assert s.total_params == 6_738_415_616 and s.tied == {}


def test_llama_config_subset_is_json_able(sig) -> None:
    config = sig("llama").config
    assert json.loads(json.dumps(config)) == config
    assert config["hidden_size"] == 4096 and config["num_hidden_layers"] == 32
    assert config["vocab_size"] == 32000 and config["intermediate_size"] == 11008
    assert config["model_type"] == "llama"
    # GPT-2's n_embd / n_layer show under the common names.
    assert sig("gpt2").config["hidden_size"] == 768 and sig("gpt2").config["num_hidden_layers"] == 12


def test_gpt2_conv1d_widths_and_tied_head(sig) -> None:
    s = sig("gpt2")
    # Conv1D keeps its weight as (in, out): c_attn maps 768 -> 3 * 768.
    assert s.modules["transformer.h.0.attn.c_attn"].params[0].shape == (768, 2304)
    assert widths(s, "transformer.h.0.attn.c_attn") == (768, 2304)
    assert widths(s, "transformer.h.0.mlp.c_fc") == (768, 3072)
    assert widths(s, "transformer.h.0.attn") == (768, 768)
    assert widths(s, "transformer.h.0.ln_1") == (768, 768)
    assert s.tied == {"lm_head.weight": "transformer.wte.weight"}
    # Both paths list the weight; the total counts it once (124,439,808 published).
    assert s.modules["lm_head"].params[0].shape == (50257, 768)
    assert s.total_params == 124_439_808


def test_t5_embeddings_tie_to_shared(sig) -> None:
    s = sig("t5-base")
    assert s.tied == {"encoder.embed_tokens.weight": "shared.weight",
                      "decoder.embed_tokens.weight": "shared.weight",
                      "lm_head.weight": "shared.weight"}
    assert s.total_params == 222_903_552
    assert widths(s, "encoder.block.0.layer.1.DenseReluDense") == (768, 768)


def test_bert_output_block_maps_ffn_width_back(sig) -> None:
    s = sig("bert-base")
    assert widths(s, "encoder.layer.0.intermediate") == (768, 3072)
    assert widths(s, "encoder.layer.0.output") == (3072, 768)  # dense 3072->768 then LayerNorm(768)


def test_mixtral_fused_experts_and_router_have_widths(sig) -> None:
    s = sig("mixtral-8x7b")
    experts = s.modules["model.layers.0.mlp.experts"]
    assert {p.name: p.shape for p in experts.params} == {
        "gate_up_proj": (8, 2 * 14336, 4096), "down_proj": (8, 4096, 14336)}
    assert widths(s, "model.layers.0.mlp.experts") == (4096, 4096)
    assert widths(s, "model.layers.0.mlp.gate") == (4096, 8)  # router: hidden -> expert logits
    assert widths(s, "model.layers.0.mlp") == (4096, 4096)
    assert s.total_params == 46_702_792_704


def test_fingerprint_ignores_dtype_and_device() -> None:
    fp16, _ = load_model("tiny-llama", dtype="float16")
    fp32_cpu, _ = load_model("tiny-llama", device="cpu")
    a, b = signature_of(fp16), signature_of(fp32_cpu)
    assert a.fingerprint == b.fingerprint
    assert a.modules["lm_head"].params[0].dtype == "float16"
    assert b.modules["lm_head"].params[0].dtype == "float32"
    # The float16 preset and the same architecture loaded in float32 agree too.
    assert signature_of(load_model("llama", dtype="float32")[0]).fingerprint == \
        signature_of(load_model("llama")[0]).fingerprint


def test_fingerprint_changes_with_structure() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    base, _ = load_model("tiny-llama")
    config = LlamaConfig(**{**base.config.to_dict(), "num_hidden_layers": 3})
    with torch.device("meta"):
        deeper = LlamaForCausalLM(config)
    assert signature_of(deeper).fingerprint != signature_of(base).fingerprint
    wider, _ = load_model("tiny-llama")
    wider.lm_head = nn.Linear(32, 65, bias=False)
    assert signature_of(wider).fingerprint != signature_of(base).fingerprint
    renamed = signature_of(base).fingerprint
    assert len(renamed) == 64 and int(renamed, 16) >= 0  # sha256 hex


def test_signature_is_frozen_and_name_defaults_to_class() -> None:
    model, _ = load_model("tiny-gpt2")
    s = signature_of(model)
    assert s.name == "GPT2LMHeadModel"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "x"  # type: ignore[misc]
    assert isinstance(s.modules["transformer"], ModuleInfo)


@pytest.mark.parametrize("preset, family", [
    ("llama", "llama"), ("llama-3.2-1b", "llama"), ("mistral-7b", "mistral"),
    ("mixtral-8x7b", "mixtral"), ("qwen2-7b", "qwen2"), ("gpt2", "gpt2"), ("bert-base", "bert"),
    ("t5-base", "t5"), ("tiny-qwen2", "qwen2"), ("tiny-t5", "t5")])
def test_family_comes_from_the_config(sig, preset: str, family: str) -> None:
    assert sig(preset).family == family


class Qwen2MoeForCausalLM(nn.Module):
    """A class whose name starts like a known family's but is another architecture."""


class GPT2LMHeadModel(nn.Module):
    """A config-less model named like GPT-2's head model."""


def test_family_without_config_comes_from_the_class_name() -> None:
    assert detect_family(GPT2LMHeadModel()) == "gpt2"
    assert detect_family(Qwen2MoeForCausalLM()) == "generic"
    assert detect_family(nn.Linear(2, 2)) == "generic"
    model, _ = load_model("tiny-llama")
    model.config.model_type = "qwen3"  # known to transformers, not to the role tables
    assert detect_family(model) == "generic"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)


def test_generic_module_signature() -> None:
    shared = nn.Linear(32, 32)
    model = nn.Sequential(nn.Embedding(100, 16), nn.ModuleList([Block(), Block()]), shared)
    model.add_module("again", shared)  # the same module registered twice: listed once
    s = signature_of(model, "custom")
    assert s.family == "generic" and s.config == {}
    assert "again" not in s.modules and s.modules[""].children == ("0", "1", "2", "again")
    assert widths(s, "") == (100, 32)
    assert widths(s, "1") == (16, 32) and s.modules["1"].is_list
    assert s.modules[""].is_list is False  # "again" is not an index
    assert s.total_params == 100 * 16 + 2 * (16 * 32 + 32 + 2 * 32) + 32 * 32 + 32


def test_signature_is_fast_on_the_largest_presets() -> None:
    # Measured and reported, not asserted tightly: a thousand modules in milliseconds.
    for name in ("llama-2-70b", "mixtral-8x7b"):
        model, _ = load_model(name)
        start = time.perf_counter()
        s = signature_of(model, name)
        elapsed = time.perf_counter() - start
        print(f"{name}: signature of {len(s.modules)} modules in {elapsed * 1000:.1f} ms")
        assert elapsed < 2.0


def test_preset_signatures_are_memoised_and_equal_to_a_fresh_read() -> None:
    from adaptlang.errors import UsageError
    from adaptlang.plan.signature import load_preset_signature

    first = load_preset_signature("tiny-gpt2")
    assert load_preset_signature("tiny-gpt2") is first
    fresh = signature_of(load_model("tiny-gpt2")[0], "tiny-gpt2")
    assert first == fresh
    with pytest.raises(UsageError):
        load_preset_signature("no-such-preset")
    with pytest.raises(UsageError, match="not a model preset"):
        load_preset_signature(".")
