"""Model presets: named architectures with their published config numbers.

Pure data (no torch import), so the compiler can find a preset's cached
signature without loading torch or transformers; building a preset is
:func:`adaptlang.plan.models.load_model`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS", "list_presets"]


@dataclass(frozen=True)
class Preset:
    """A named model architecture, built from a ``transformers`` config.

    Attributes:
        description: One line for ``adaptc presets``.
        model_type: The ``transformers`` config's ``model_type``.
        cls: The ``transformers`` model class to build.
        config: Config keyword arguments (the published ``config.json`` numbers).
        dtype: The dtype the checkpoint is published in; meta models are built in it.
    """

    description: str
    model_type: str
    cls: str
    config: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"


# The published config.json numbers of each checkpoint (hub ids in the
# descriptions); fields that do not change the structure (token ids,
# initializer ranges) keep transformers' defaults.
_LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
_LLAMA2_13B = dict(_LLAMA2_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                   num_attention_heads=40, num_key_value_heads=40)
_LLAMA2_70B = dict(_LLAMA2_7B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8)
_LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                  tie_word_embeddings=False)
_LLAMA32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                   max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                   tie_word_embeddings=True)
_MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                   max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                   sliding_window=4096, tie_word_embeddings=False)
_MIXTRAL_8X7B = dict(_MISTRAL_7B, rope_theta=1e6, sliding_window=None, num_local_experts=8,
                     num_experts_per_tok=2, router_aux_loss_coef=0.02)
_QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                 max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1e6,
                 use_sliding_window=False, sliding_window=131072, max_window_layers=28,
                 tie_word_embeddings=False)
_GPT2 = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
_BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
_T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                num_decoder_layers=12, num_heads=12, relative_attention_num_buckets=32,
                decoder_start_token_id=0, pad_token_id=0)

# Tiny variants: the same classes at width 32, 2 layers, vocabulary 64, no
# dropout, so they run deterministically on a CPU in milliseconds.
_TINY_DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=False)

PRESETS: dict[str, Preset] = {
    "llama": Preset("Llama-2-7B (meta-llama/Llama-2-7b-hf): 32 layers, hidden 4096, MLP 11008",
                    "llama", "LlamaForCausalLM", _LLAMA2_7B, "float16"),
    "llama-2-7b": Preset("alias of llama (Llama-2-7B)", "llama", "LlamaForCausalLM", _LLAMA2_7B,
                         "float16"),
    "llama-2-13b": Preset("Llama-2-13B: 40 layers, hidden 5120, MLP 13824",
                          "llama", "LlamaForCausalLM", _LLAMA2_13B, "float16"),
    "llama-2-70b": Preset("Llama-2-70B: 80 layers, hidden 8192, MLP 28672, 8 KV heads (GQA)",
                          "llama", "LlamaForCausalLM", _LLAMA2_70B, "float16"),
    "llama-3-8b": Preset("Meta-Llama-3-8B: 32 layers, hidden 4096, MLP 14336, vocab 128256, GQA",
                         "llama", "LlamaForCausalLM", _LLAMA3_8B, "bfloat16"),
    "llama-3.2-1b": Preset("Llama-3.2-1B: 16 layers, hidden 2048, tied embeddings",
                           "llama", "LlamaForCausalLM", _LLAMA32_1B, "bfloat16"),
    "mistral-7b": Preset("Mistral-7B-v0.1: 32 layers, hidden 4096, MLP 14336, GQA, sliding window",
                         "mistral", "MistralForCausalLM", _MISTRAL_7B, "bfloat16"),
    "mixtral-8x7b": Preset("Mixtral-8x7B-v0.1: 32 layers, 8 experts (top 2), fused expert weights",
                           "mixtral", "MixtralForCausalLM", _MIXTRAL_8X7B, "bfloat16"),
    "qwen2-7b": Preset("Qwen2-7B: 28 layers, hidden 3584, MLP 18944, vocab 152064, q/k/v biases",
                       "qwen2", "Qwen2ForCausalLM", _QWEN2_7B, "bfloat16"),
    "gpt2": Preset("GPT-2 small (openai-community/gpt2): 12 layers, 768 wide, 124M",
                   "gpt2", "GPT2LMHeadModel", _GPT2, "float32"),
    "bert-base": Preset("BERT-base uncased encoder with pooler (BertModel): 12 layers, 768 wide",
                        "bert", "BertModel", _BERT_BASE, "float32"),
    "t5-base": Preset("T5-base encoder-decoder (google-t5/t5-base): 12 + 12 layers, 768 wide",
                      "t5", "T5ForConditionalGeneration", _T5_BASE, "float32"),
    "tiny-llama": Preset("tiny Llama for tests: 2 layers, hidden 32, 4 heads, 2 KV heads",
                         "llama", "LlamaForCausalLM", _TINY_DECODER),
    "tiny-mistral": Preset("tiny Mistral for tests: 2 layers, hidden 32",
                           "mistral", "MistralForCausalLM", dict(_TINY_DECODER, sliding_window=None)),
    "tiny-mixtral": Preset("tiny Mixtral for tests: 2 layers, hidden 32, 4 experts (top 2)",
                           "mixtral", "MixtralForCausalLM",
                           dict(_TINY_DECODER, num_local_experts=4, num_experts_per_tok=2,
                                sliding_window=None)),
    "tiny-qwen2": Preset("tiny Qwen2 for tests: 2 layers, hidden 32, q/k/v biases",
                         "qwen2", "Qwen2ForCausalLM", dict(_TINY_DECODER, use_sliding_window=False)),
    "tiny-gpt2": Preset("tiny GPT-2 for tests: 2 layers, 32 wide, no dropout", "gpt2",
                        "GPT2LMHeadModel",
                        dict(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             bos_token_id=63, eos_token_id=63)),
    "tiny-bert": Preset("tiny BERT encoder (BertModel) for tests: 2 layers, 32 wide, no dropout",
                        "bert", "BertModel",
                        dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    "tiny-t5": Preset("tiny T5 for tests: 2 + 2 layers, 32 wide, no dropout", "t5",
                      "T5ForConditionalGeneration",
                      dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                           num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
                           decoder_start_token_id=0, pad_token_id=0)),
}


def list_presets() -> dict[str, str]:
    """Returns every preset name with its one-line description, in table order."""
    return {name: preset.description for name, preset in PRESETS.items()}
