"""Model presets, Hugging Face directories and factories (``adaptlang.plan.models``).

Parameter counts are pinned to the published checkpoints and re-derived from
their config numbers with the closed form of each architecture, so a wrong
config field and a wrong count cannot cancel out.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from adaptlang.errors import UsageError
from adaptlang.plan.models import PRESETS, list_presets, load_model


def decoder_params(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, *,
                   tied: bool = False, qkv_bias: bool = False, experts: int = 0) -> int:
    """Counts a Llama-style decoder: embeddings, attention, (MoE) MLP, RMSNorms, LM head."""
    head_dim = hidden // heads
    kv_dim = kv * head_dim
    attn = 2 * hidden * hidden + 2 * hidden * kv_dim + (hidden + 2 * kv_dim if qkv_bias else 0)
    mlp = 3 * hidden * inter
    if experts:
        mlp = experts * mlp + experts * hidden  # experts plus the router (experts x hidden)
    per_layer = attn + mlp + 2 * hidden  # two RMSNorms
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


# Published totals; the formula re-derives each from the checkpoint's config.json.
EXPECTED = {
    "llama": (6_738_415_616, decoder_params(32000, 4096, 11008, 32, 32, 32)),
    "llama-2-7b": (6_738_415_616, decoder_params(32000, 4096, 11008, 32, 32, 32)),
    "llama-2-13b": (13_015_864_320, decoder_params(32000, 5120, 13824, 40, 40, 40)),
    "llama-2-70b": (68_976_648_192, decoder_params(32000, 8192, 28672, 80, 64, 8)),
    "llama-3-8b": (8_030_261_248, decoder_params(128256, 4096, 14336, 32, 32, 8)),
    # head_dim 64 = 2048 / 32, embeddings tied to the LM head
    "llama-3.2-1b": (1_235_814_400, decoder_params(128256, 2048, 8192, 16, 32, 8, tied=True)),
    "mistral-7b": (7_241_732_096, decoder_params(32000, 4096, 14336, 32, 32, 8)),
    "mixtral-8x7b": (46_702_792_704, decoder_params(32000, 4096, 14336, 32, 32, 8, experts=8)),
    "qwen2-7b": (7_615_616_512, decoder_params(152064, 3584, 18944, 28, 28, 4, qkv_bias=True)),
    # GPT-2: wte 50257x768 + wpe 1024x768 + 12 x (weights 768x2304 + 768^2 + 2x768x3072
    # = 12*768^2, biases 2304 + 768 + 3072 + 768 = 9*768, two LayerNorms 4*768) + ln_f 2*768;
    # the LM head is tied to wte.
    "gpt2": (124_439_808, 50257 * 768 + 1024 * 768 + 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768),
    # BERT-base: word 30522x768, position 512x768, type 2x768, LayerNorm 2*768;
    # 12 x (4 x (768^2 + 768) + 2 x 768 x 3072 + 3072 + 768 + 2 LayerNorms 4*768); pooler 768^2 + 768.
    "bert-base": (109_482_240, (30522 + 512 + 2) * 768 + 2 * 768
                  + 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)
                  + 768 * 768 + 768),
    # T5-base: shared 32128x768 (tied to both embed_tokens and lm_head); encoder blocks
    # 4*768^2 attention + 2*768*3072 FF + 2 norms; decoder adds cross-attention and a norm;
    # one relative-attention bias 32x12 per stack; final norms.
    "t5-base": (222_903_552, 32128 * 768 + 12 * (4 * 768 * 768 + 2 * 768 * 3072 + 2 * 768)
                + 12 * (8 * 768 * 768 + 2 * 768 * 3072 + 3 * 768) + 2 * 32 * 12 + 2 * 768),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts_match_published_checkpoints(name: str) -> None:
    model, loaded = load_model(name)
    pinned, formula = EXPECTED[name]
    assert pinned == formula
    assert sum(p.numel() for p in model.parameters()) == pinned
    assert loaded == name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_meta_in_their_published_dtype(name: str) -> None:
    model, _ = load_model(name)
    want = getattr(torch, PRESETS[name].dtype)
    params = list(model.parameters())
    assert params and {p.device.type for p in params} == {"meta"}
    assert {p.dtype for p in params} == {want}
    assert type(model).__name__ == PRESETS[name].cls


def test_preset_classes_and_dtypes_follow_the_checkpoints() -> None:
    assert {n: PRESETS[n].cls for n in ("llama", "gpt2", "bert-base", "t5-base", "mixtral-8x7b")} == {
        "llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert-base": "BertModel",
        "t5-base": "T5ForConditionalGeneration", "mixtral-8x7b": "MixtralForCausalLM"}
    decoders = [n for n in PRESETS if n not in ("gpt2", "tiny-gpt2", "bert-base", "tiny-bert",
                                                "t5-base", "tiny-t5")]
    assert all(PRESETS[n].cls.endswith("ForCausalLM") for n in decoders)
    # Llama-2 ships float16; Llama-3, Mistral, Mixtral and Qwen2 bfloat16; the rest float32.
    assert PRESETS["llama-2-70b"].dtype == "float16"
    bf16 = ("llama-3-8b", "llama-3.2-1b", "mistral-7b", "mixtral-8x7b", "qwen2-7b")
    assert {PRESETS[n].dtype for n in bf16} == {"bfloat16"}
    assert {PRESETS[n].dtype for n in ("gpt2", "bert-base", "t5-base", "tiny-llama")} == {"float32"}


def test_large_meta_models_build_quickly_enough_to_report() -> None:
    # Sanity only (no time assert): a 70B model on meta is a structure, not 140 GB.
    for name in ("llama-2-70b", "mixtral-8x7b"):
        start = time.perf_counter()
        model, _ = load_model(name)
        elapsed = time.perf_counter() - start
        assert model.lm_head.weight.is_meta
        print(f"{name}: built on meta in {elapsed * 1000:.1f} ms")


def test_mixtral_experts_are_fused_3d_parameters() -> None:
    # transformers 5 stores the 8 experts of a layer as two 3-D tensors, not 24 Linears.
    model, _ = load_model("mixtral-8x7b")
    moe = model.model.layers[0].mlp
    assert type(moe.experts).__name__ == "MixtralExperts"
    assert tuple(moe.experts.gate_up_proj.shape) == (8, 2 * 14336, 4096)
    assert tuple(moe.experts.down_proj.shape) == (8, 4096, 14336)
    assert not isinstance(moe.gate, torch.nn.Linear)  # the router is its own class


def test_every_call_returns_a_fresh_module() -> None:
    first, _ = load_model("tiny-llama")
    second, _ = load_model("tiny-llama")
    assert first is not second
    assert first.lm_head.weight is not second.lm_head.weight


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("tiny-")])
def test_tiny_presets_build_with_random_weights_on_cpu(name: str) -> None:
    model, _ = load_model(name, device="cpu")
    weights = [p for p in model.parameters() if p.dim() == 2]
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert any(float(p.detach().std()) > 0 for p in weights)  # initialised, not empty
    assert not model.training


def test_tiny_llama_runs_a_forward_pass() -> None:
    model, _ = load_model("tiny-llama", device="cpu")
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (B, T, vocab)
    assert logits.shape == (2, 5, 64)
    assert torch.isfinite(logits).all()


def test_dtype_argument_overrides_the_preset_dtype() -> None:
    model, _ = load_model("tiny-llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_model("llama", dtype=torch.float32)
    assert model.lm_head.weight.dtype == torch.float32
    with pytest.raises(UsageError, match="unknown dtype"):
        load_model("tiny-llama", dtype="float17")


def test_list_presets_describes_every_preset() -> None:
    presets = list_presets()
    assert list(presets) == list(PRESETS)
    assert all(isinstance(d, str) and d for d in presets.values())
    assert {"llama", "gpt2", "bert-base", "t5-base", "mixtral-8x7b", "tiny-llama"} <= set(presets)


def test_unknown_name_suggests_a_preset_and_lists_them() -> None:
    with pytest.raises(UsageError) as info:
        load_model("lama")
    diag = info.value.diagnostics[0]
    assert diag.hint == "did you mean 'llama'?"
    assert "tiny-gpt2" in diag.notes[0]
    assert info.value.exit_code == 2


# ----------------------------------------------------------------------
# Hugging Face directories.


def save_config(directory, config) -> None:
    """Writes a transformers config's config.json into ``directory``."""
    config.save_pretrained(str(directory))


def test_directory_builds_the_class_in_architectures(tmp_path) -> None:
    from transformers import LlamaConfig

    save_config(tmp_path, LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      architectures=["LlamaForCausalLM"], dtype="bfloat16"))
    model, name = load_model(str(tmp_path))
    assert name == str(tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 3
    assert model.lm_head.weight.is_meta and model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("model_type, expected", [
    ("gpt2", "GPT2LMHeadModel"), ("bert", "BertModel"), ("t5", "T5ForConditionalGeneration")])
def test_directory_without_architectures_uses_auto_classes(tmp_path, model_type: str,
                                                            expected: str) -> None:
    from transformers import CONFIG_MAPPING

    small = {"gpt2": dict(n_layer=1, n_embd=32, n_head=4, vocab_size=50),
             "bert": dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                          intermediate_size=64, vocab_size=50),
             "t5": dict(num_layers=1, d_model=32, d_kv=8, d_ff=64, num_heads=4, vocab_size=50)}
    save_config(tmp_path, CONFIG_MAPPING[model_type](**small[model_type]))
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("architectures", None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model, _ = load_model(str(tmp_path))
    assert type(model).__name__ == expected


def test_directory_without_config_is_a_usage_error_naming_it(tmp_path) -> None:
    with pytest.raises(UsageError) as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in info.value.render()
    assert "config.json" in info.value.render()


def test_directory_errors_are_usage_errors(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"x": "y"}}))
    with pytest.raises(UsageError, match="custom code"):
        load_model(str(tmp_path))
    with pytest.raises(UsageError, match="no such model directory"):
        load_model(str(tmp_path / "missing"))


# ----------------------------------------------------------------------
# Factories.

FACTORY_MODULE = '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8))

def not_a_module():
    return 42

def broken():
    raise RuntimeError("no GPU here")
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    """A throwaway importable module of model factories; returns its name."""
    (tmp_path / "adaptlang_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "adaptlang_test_factories"


def test_factory_builds_any_module_on_the_requested_device(factory_module: str) -> None:
    model, name = load_model(f"{factory_module}:build")
    assert name == f"{factory_module}:build"
    assert isinstance(model, torch.nn.Sequential)
    assert model[1].weight.is_meta
    cpu_model, _ = load_model(f"{factory_module}:build", device="cpu")
    assert cpu_model[1].weight.device.type == "cpu"


@pytest.mark.parametrize("ref, message", [
    ("adaptlang_test_factories:not_a_module", "returned int, not a torch.nn.Module"),
    ("adaptlang_test_factories:broken", "failed: RuntimeError: no GPU here"),
    ("adaptlang_test_factories:buld", "has no attribute 'buld'"),
    ("adaptlang_no_such_package.models:build", "cannot import 'adaptlang_no_such_package.models'"),
])
def test_factory_errors_are_usage_errors(factory_module: str, ref: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_model(ref)
    assert message in info.value.render()


def test_factory_misspelt_attribute_suggests_the_real_one(factory_module: str) -> None:
    with pytest.raises(UsageError) as info:
        load_model(f"{factory_module}:buld")
    assert info.value.diagnostics[0].hint == "did you mean 'build'?"


def test_a_failing_factory_on_meta_says_compile_builds_without_weights(tmp_path, monkeypatch) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         vocab_size=50)).save_pretrained(str(tmp_path / "bert"))
    (tmp_path / "adaptlang_test_loading.py").write_text(
        "import transformers\n"
        f"def load():\n    return transformers.BertModel.from_pretrained({str(tmp_path / 'bert')!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as info:
        load_model("adaptlang_test_loading:load")
    diag = info.value.diagnostics[0]
    assert "model factory 'adaptlang_test_loading:load' failed" in diag.message
    assert "meta device (no weights)" in diag.hint and "build from a config" in diag.hint
    model, _ = load_model("adaptlang_test_loading:load", device="cpu")  # with storage it loads
    assert type(model).__name__ == "BertModel"


# ----------------------------------------------------------------------
# Task heads (head=, num_labels=).

BERT_SMALL = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)


@pytest.mark.parametrize("preset, head, cls, head_module", [
    ("tiny-bert", "sequence-classification", "BertForSequenceClassification", "classifier"),
    ("tiny-bert", "causal-lm", "BertLMHeadModel", "cls"),
    ("tiny-bert", "base", "BertModel", None),
    ("tiny-llama", "sequence-classification", "LlamaForSequenceClassification", "score"),
    ("tiny-llama", "base", "LlamaModel", None),
    ("tiny-t5", "seq2seq-lm", "T5ForConditionalGeneration", "lm_head"),
])
def test_each_head_builds_on_a_preset(preset: str, head: str, cls: str, head_module) -> None:
    model, name = load_model(preset, head=head)
    assert name == preset and type(model).__name__ == cls
    if head_module is not None:
        assert hasattr(model, head_module)


def test_each_head_builds_on_a_directory(tmp_path) -> None:
    from transformers import BertConfig

    save_config(tmp_path, BertConfig(architectures=["BertModel"], **BERT_SMALL))
    assert type(load_model(str(tmp_path))[0]).__name__ == "BertModel"  # what config.json names
    for head, cls in [("sequence-classification", "BertForSequenceClassification"),
                      ("causal-lm", "BertLMHeadModel"), ("base", "BertModel")]:
        model, _ = load_model(str(tmp_path), head=head)
        assert type(model).__name__ == cls, head


@pytest.mark.parametrize("ref", ["tiny-bert", "dir"])
def test_num_labels_sets_the_classifier_width(tmp_path, ref: str) -> None:
    from transformers import BertConfig

    save_config(tmp_path, BertConfig(architectures=["BertModel"], **BERT_SMALL))
    ref = str(tmp_path) if ref == "dir" else ref
    default, _ = load_model(ref, head="sequence-classification")
    assert default.classifier.out_features == 2  # transformers' default num_labels
    model, _ = load_model(ref, num_labels=5)  # implies the classification head
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (model.classifier.in_features, model.classifier.out_features) == (32, 5)


def test_head_errors_are_clear_usage_errors(factory_module: str) -> None:
    with pytest.raises(UsageError) as info:
        load_model("tiny-bert", head="seq2seq-lm")
    diag = info.value.diagnostics[0]
    assert diag.message == "model type 'bert' has no seq2seq-lm head in transformers"
    assert diag.hint == "heads it has: sequence-classification, causal-lm, base"
    with pytest.raises(UsageError) as info:
        load_model("tiny-bert", head="sequence-clasification")
    assert info.value.diagnostics[0].hint == "did you mean 'sequence-classification'?"
    with pytest.raises(UsageError, match="num_labels needs the sequence-classification head"):
        load_model("tiny-bert", head="causal-lm", num_labels=3)
    with pytest.raises(UsageError, match=r"num_labels must be from 1 to 1,000,000 \(MAX_NUM_LABELS\), not 0"):
        load_model("tiny-bert", num_labels=0)
    with pytest.raises(UsageError) as info:
        load_model(f"{factory_module}:build", head="sequence-classification")
    assert "--head does not apply to a model factory" in info.value.diagnostics[0].message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("saved", [None, "bfloat16"])
def test_a_directory_dtype_is_read_without_the_deprecated_torch_dtype(tmp_path, monkeypatch, saved) -> None:
    """transformers 5 warns on every read of ``config.torch_dtype`` (all-MiniLM-L6-v2 saves no dtype)."""
    import transformers
    from transformers import BertConfig

    save_config(tmp_path, BertConfig(architectures=["BertModel"], **BERT_SMALL))
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("dtype", None)
    if saved:
        raw["torch_dtype"] = saved  # as checkpoints saved by transformers 4 spell it
    (tmp_path / "config.json").write_text(json.dumps(raw))
    reads = []
    alias = transformers.PretrainedConfig.torch_dtype  # the property that logs the deprecation

    def counted(config):
        reads.append(config)
        return alias.fget(config)

    monkeypatch.setattr(transformers.PretrainedConfig, "torch_dtype", property(counted, alias.fset))
    model, _ = load_model(str(tmp_path))
    assert reads == []
    expected = torch.bfloat16 if saved else torch.float32  # no dtype saved: torch's default
    assert model.embeddings.word_embeddings.weight.dtype == expected
