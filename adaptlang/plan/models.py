"""Models without weights: presets, Hugging Face directories and factories.

The planner works on a model's structure only, so models are built on the
``meta`` device: every parameter has a shape and a dtype but no storage, and a
70B model is built in a fraction of a second. Three kinds of reference are
accepted by :func:`load_model`:

* a **preset** name (``llama``, ``gpt2``, ``tiny-llama``, ...): a
  ``transformers`` config with the published numbers of that checkpoint,
  built without the hub;
* a local **Hugging Face model directory** (its ``config.json`` only; nothing
  is ever downloaded and weights are never read);
* ``package.module:factory``: a callable returning any ``nn.Module``.

Small ``tiny-*`` presets (2 layers, width 32) can also be built with real
random weights on the CPU, for tests and demos.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from adaptlang.errors import Diagnostic, UsageError, did_you_mean

__all__ = ["Preset", "PRESETS", "list_presets", "load_model"]


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

#: ``package.module:factory`` (dotted identifiers on both sides of one colon).
_FACTORY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def list_presets() -> dict[str, str]:
    """Returns every preset name with its one-line description, in table order."""
    return {name: preset.description for name, preset in PRESETS.items()}


def load_model(ref: str, device: str = "meta", dtype: Any = None) -> tuple[nn.Module, str]:
    """Builds a model from a preset name, a Hugging Face directory or a factory.

    Every call returns a fresh module (callers may patch it).

    Args:
        ref: A preset name (see :func:`list_presets`), a local model directory
            holding ``config.json``, or ``package.module:factory``.
        device: ``"meta"`` (no storage; the default) or a real device such as
            ``"cpu"`` (random weights; sensible for ``tiny-*`` presets only).
        dtype: A ``torch.dtype`` or its name; None means the preset's published
            dtype (a directory: its config's dtype; a factory: as it builds).

    Returns:
        ``(module, name)``: the model and its name (the preset name, the
        directory as given, or the factory reference).

    Raises:
        UsageError: An unknown name, a directory without a usable
            ``config.json``, or a factory that cannot be imported, fails, or
            does not return an ``nn.Module``.
    """
    ref, device = str(ref).strip(), str(device)
    wanted = _parse_dtype(dtype, ref) if dtype is not None else None
    if ref in PRESETS:
        return _build_preset(PRESETS[ref], device, wanted), ref
    path = Path(ref).expanduser()
    if path.exists():
        return _load_directory(path, device, wanted), ref
    if _FACTORY_REF.match(ref):
        return _load_factory(ref, device, wanted), ref
    if "/" in ref or "\\" in ref or ref.startswith("."):
        raise UsageError(Diagnostic(f"no such model directory: {ref}", obj=ref,
                                    hint="give a local directory holding config.json, or a preset name"))
    raise UsageError(Diagnostic(
        f"unknown model '{ref}'", obj=ref,
        hint=did_you_mean(ref, PRESETS) or "use a preset name, a model directory or pkg.module:factory",
        notes=("presets: " + ", ".join(PRESETS),)))


def _parse_dtype(dtype: Any, ref: str) -> torch.dtype:
    """Returns ``dtype`` as a ``torch.dtype`` (accepts ``"bfloat16"``, ``"torch.float16"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise UsageError(Diagnostic(f"unknown dtype '{dtype}'", obj=ref,
                                    hint="for example float32, float16 or bfloat16"))
    return found


@contextlib.contextmanager
def _building(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Constructs modules directly on ``device`` and, when given, in ``dtype``.

    On ``meta`` no storage is allocated and weight initialisation has nothing
    to fill, which is what makes a 70B model cheap to build. The default
    dtype is set the way ``from_pretrained(dtype=...)`` does it, and restored.
    """
    previous = torch.get_default_dtype()
    try:
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)
        with torch.device(device), (_skip_init() if str(device) == "meta" else contextlib.nullcontext()):
            yield
    finally:
        torch.set_default_dtype(previous)


#: ``torch.nn.init`` functions that modules call from ``reset_parameters``.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                   "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Makes ``torch.nn.init`` fills no-ops while building on meta (there is nothing to fill).

    Initialising is the largest avoidable cost of building a meta model: every
    Linear draws a kaiming init, which on meta still dispatches through Python
    decompositions. ``transformers`` skips its own init on meta; this covers
    torch's. Weight tying is untouched.
    """
    originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}

    def skip(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for name in originals:
            setattr(nn.init, name, skip)
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn.init, name, fn)


def _build_preset(preset: Preset, device: str, dtype: torch.dtype | None) -> nn.Module:
    """Builds a preset's ``transformers`` model on ``device``."""
    import transformers

    dtype = dtype or getattr(torch, preset.dtype)
    config = transformers.CONFIG_MAPPING[preset.model_type](**preset.config)
    config.dtype = dtype
    model_cls = getattr(transformers, preset.cls)
    with _building(device, dtype):
        model = model_cls(config)
    return model if device == "meta" else model.eval()


def _load_directory(path: Path, device: str, dtype: torch.dtype | None) -> nn.Module:
    """Builds the model a local Hugging Face directory describes (config only)."""
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise UsageError(Diagnostic(
            f"'{path}' is not a Hugging Face model directory (no config.json)", obj=str(path),
            hint="point --model at a folder holding config.json, or use a preset name"))
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(Diagnostic(f"cannot read {config_file}: {exc}", obj=str(config_file))) from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UsageError(Diagnostic(f"{config_file} has no 'model_type'", obj=str(config_file),
                                    hint="a transformers config.json names its model_type"))
    if raw.get("auto_map"):
        raise UsageError(Diagnostic(
            f"{config_file} needs custom code (auto_map), which adaptlang does not run",
            obj=str(config_file), hint="wrap the model in a pkg.module:factory instead"))
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad config
        raise UsageError(Diagnostic(f"cannot build a config from {config_file}: {exc}",
                                    obj=str(config_file))) from None
    dtype = dtype or _config_dtype(config)
    model_cls = _directory_class(raw, config)
    try:
        with _building(device, dtype):
            model = model_cls(config) if isinstance(model_cls, type) and issubclass(model_cls, nn.Module) \
                else model_cls.from_config(config)
    except Exception as exc:
        raise UsageError(Diagnostic(f"cannot build the model in {path}: {exc}", obj=str(path))) from None
    return model if device == "meta" else model.eval()


def _config_dtype(config: Any) -> torch.dtype | None:
    """Returns the dtype a config was saved with (``dtype`` or the older ``torch_dtype``)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value), None) if value else None
    return found if isinstance(found, torch.dtype) else None


#: Encoder-only model types: without ``architectures`` they load as the bare
#: encoder (``AutoModel``), not as a causal-LM head that merely exists for them.
_ENCODER_ONLY = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra",
                           "deberta", "deberta-v2", "camembert", "mpnet"})


def _directory_class(raw: dict[str, Any], config: Any) -> Any:
    """Returns the class named in ``architectures``, else an Auto class by ``model_type``.

    Without ``architectures``: encoder-decoders load for seq2seq LM, encoders
    as the bare model, anything else as a causal LM where transformers has one.
    """
    import transformers

    for name in raw.get("architectures") or ():
        found = getattr(transformers, str(name), None)
        if isinstance(found, type) and issubclass(found, nn.Module):
            return found
    if getattr(config, "is_encoder_decoder", False):
        order = ("AutoModelForSeq2SeqLM", "AutoModel")
    elif raw["model_type"] in _ENCODER_ONLY:
        order = ("AutoModel",)
    else:
        order = ("AutoModelForCausalLM", "AutoModel")
    for auto in order:
        if type(config) in getattr(transformers, auto)._model_mapping:
            return getattr(transformers, auto)
    raise UsageError(Diagnostic(f"transformers has no model class for model_type "
                                f"'{raw['model_type']}'", obj=str(raw.get("architectures"))))


def _load_factory(ref: str, device: str, dtype: torch.dtype | None) -> nn.Module:
    """Imports ``package.module:factory``, calls it and checks it returned a module."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises on import
        raise UsageError(Diagnostic(f"cannot import '{module_name}' for model '{ref}': {exc}",
                                    obj=ref, hint="is the package installed, or on PYTHONPATH?")) from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(Diagnostic(f"'{module_name}' has no attribute '{attr}'", obj=ref,
                                        hint=did_you_mean(part, dir(module))))
    if not callable(factory):
        raise UsageError(Diagnostic(f"'{ref}' is not callable", obj=ref,
                                    hint="name a function or class that returns an nn.Module"))
    try:
        with _building(device, dtype):
            model = factory()
    except Exception as exc:
        raise UsageError(Diagnostic(f"model factory '{ref}' failed: {type(exc).__name__}: {exc}",
                                    obj=ref)) from None
    if not isinstance(model, nn.Module):
        raise UsageError(Diagnostic(f"model factory '{ref}' returned {type(model).__name__}, "
                                    "not a torch.nn.Module", obj=ref))
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model
