"""Roles per model family (``adaptlang.plan.roles``), on full presets and tiny variants alike."""

from __future__ import annotations

import pytest
from torch import nn

from adaptlang.plan.models import load_model
from adaptlang.plan.roles import ROLE_NAMES, find_roles
from adaptlang.plan.signature import signature_of

LLAMA_ROLES = ("layers", "attn", "q", "k", "v", "o", "mlp", "up", "gate", "down", "embed", "head", "norm")


def first_paths(sig) -> dict[str, str]:
    """Each role's first path."""
    return {role: paths[0] for role, paths in sig.roles.items()}


@pytest.mark.parametrize("preset", ["llama", "llama-3.2-1b", "mistral-7b", "qwen2-7b",
                                    "tiny-llama", "tiny-mistral", "tiny-qwen2"])
def test_llama_like_roles(sig, preset: str) -> None:
    s = sig(preset)
    layers = s.config["num_hidden_layers"]
    assert tuple(s.roles) == LLAMA_ROLES
    assert s.roles["layers"] == ("model.layers",)
    assert s.roles["embed"] == ("model.embed_tokens",) and s.roles["head"] == ("lm_head",)
    for role, leaf in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                       ("o", "self_attn.o_proj"), ("up", "mlp.up_proj"), ("gate", "mlp.gate_proj"),
                       ("down", "mlp.down_proj"), ("attn", "self_attn"), ("mlp", "mlp")):
        assert s.roles[role] == tuple(f"model.layers.{i}.{leaf}" for i in range(layers)), role
    # Two RMSNorms per layer and the final one.
    assert len(s.roles["norm"]) == 2 * layers + 1 and s.roles["norm"][-1] == "model.norm"


def test_tiny_variants_have_the_full_models_roles(sig) -> None:
    for full, tiny in (("llama", "tiny-llama"), ("gpt2", "tiny-gpt2"), ("bert-base", "tiny-bert"),
                       ("t5-base", "tiny-t5"), ("mixtral-8x7b", "tiny-mixtral")):
        assert tuple(sig(full).roles) == tuple(sig(tiny).roles), full
        assert first_paths(sig(full)) == first_paths(sig(tiny)), full


@pytest.mark.parametrize("preset", ["mixtral-8x7b", "tiny-mixtral"])
def test_mixtral_roles_with_fused_experts(sig, preset: str) -> None:
    s = sig(preset)
    # transformers 5 fuses the experts into one module of 3-D parameters: no @up/@gate/@down.
    assert tuple(s.roles) == ("layers", "attn", "q", "k", "v", "o", "mlp", "experts", "router",
                              "embed", "head", "norm")
    assert first_paths(s)["mlp"] == "model.layers.0.mlp"
    assert first_paths(s)["experts"] == "model.layers.0.mlp.experts"
    assert first_paths(s)["router"] == "model.layers.0.mlp.gate"
    assert s.modules["model.layers.0.mlp"].cls == "MixtralSparseMoeBlock"


@pytest.mark.parametrize("preset", ["gpt2", "tiny-gpt2"])
def test_gpt2_roles(sig, preset: str) -> None:
    s = sig(preset)
    assert tuple(s.roles) == ("layers", "attn", "qkv", "o", "mlp", "up", "down", "embed", "head", "norm")
    assert first_paths(s) == {
        "layers": "transformer.h", "attn": "transformer.h.0.attn", "qkv": "transformer.h.0.attn.c_attn",
        "o": "transformer.h.0.attn.c_proj", "mlp": "transformer.h.0.mlp", "up": "transformer.h.0.mlp.c_fc",
        "down": "transformer.h.0.mlp.c_proj", "embed": "transformer.wte", "head": "lm_head",
        "norm": "transformer.h.0.ln_1"}
    n = s.config["num_hidden_layers"]
    assert len(s.roles["qkv"]) == n and len(s.roles["norm"]) == 2 * n + 1


@pytest.mark.parametrize("preset", ["bert-base", "tiny-bert"])
def test_bert_roles(sig, preset: str) -> None:
    s = sig(preset)
    # BertModel has no LM head; the pooler is not a head either.
    assert tuple(s.roles) == ("layers", "attn", "q", "k", "v", "o", "mlp", "up", "down", "embed", "norm")
    assert first_paths(s) == {
        "layers": "encoder.layer", "attn": "encoder.layer.0.attention",
        "q": "encoder.layer.0.attention.self.query", "k": "encoder.layer.0.attention.self.key",
        "v": "encoder.layer.0.attention.self.value", "o": "encoder.layer.0.attention.output.dense",
        "mlp": "encoder.layer.0.output", "up": "encoder.layer.0.intermediate.dense",
        "down": "encoder.layer.0.output.dense", "embed": "embeddings.word_embeddings",
        "norm": "embeddings.LayerNorm"}


@pytest.mark.parametrize("preset", ["t5-base", "tiny-t5"])
def test_t5_roles_span_encoder_and_decoder(sig, preset: str) -> None:
    s = sig(preset)
    n = s.config["num_hidden_layers"]
    assert s.roles["layers"] == ("encoder.block", "decoder.block")
    assert s.roles["embed"] == ("shared",) and s.roles["head"] == ("lm_head",)
    # Encoder blocks: self-attention; decoder blocks: self- and cross-attention.
    assert len(s.roles["attn"]) == 3 * n and len(s.roles["q"]) == 3 * n
    assert s.roles["attn"][n:n + 2] == ("decoder.block.0.layer.0.SelfAttention",
                                        "decoder.block.0.layer.1.EncDecAttention")
    assert s.roles["mlp"][0] == "encoder.block.0.layer.1.DenseReluDense"
    assert s.roles["mlp"][n] == "decoder.block.0.layer.2.DenseReluDense"
    assert s.roles["up"][0].endswith("DenseReluDense.wi") and s.roles["down"][0].endswith("DenseReluDense.wo")
    assert "gate" not in s.roles  # T5 v1.0 is not gated


def test_roles_keep_model_order_and_known_names(sig) -> None:
    for preset in ("llama", "gpt2", "bert-base", "t5-base", "mixtral-8x7b"):
        s = sig(preset)
        order = {p: i for i, p in enumerate(s.modules)}
        assert set(s.roles) <= set(ROLE_NAMES)
        for paths in s.roles.values():
            assert [order[p] for p in paths] == sorted(order[p] for p in paths)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, 8)
        self.pos = nn.Embedding(10, 8)
        self.stem = nn.ModuleList([nn.Linear(8, 8)])
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.lm_head = nn.Linear(8, 20)


def test_generic_model_gets_inferred_roles() -> None:
    s = signature_of(Tiny(), "tiny")
    assert s.family == "generic"
    assert s.roles == {
        "layers": ("blocks",),  # the longest list
        "embed": ("tok",),  # the first Embedding
        "head": ("lm_head",),
        "norm": ("blocks.0.norm", "blocks.1.norm", "blocks.2.norm"),
    }


def test_generic_model_with_llama_style_paths_gets_those_roles() -> None:
    model, _ = load_model("tiny-llama")
    model.config.model_type = "some-new-llama"  # unknown family, familiar layout
    s = signature_of(model)
    assert s.family == "generic"
    assert tuple(s.roles) == LLAMA_ROLES


def test_find_roles_on_a_model_without_any() -> None:
    assert find_roles("generic", signature_of(nn.ReLU()).modules) == {}
