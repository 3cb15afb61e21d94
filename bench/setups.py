"""Models, specs and the weight copying that makes ours and PEFT compute the same function."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "Setting", "build_llama", "copy_lora_to_peft", "copy_prompt_to_peft", "cpu_setting", "cuda_setting",
    "lora_spec", "lora_flops_ratio", "peft_lora_config", "randomize", "sync_for",
]

#: PEFT's ``target_modules="all-linear"`` on a Llama: every Linear of every block.
ALL_LINEAR = "layers[*].** is Linear"


@dataclass(frozen=True)
class Setting:
    """Where and at what size sections 2 and 3 run.

    Attributes:
        name: ``cpu`` or ``cuda``.
        device: The torch device.
        dtype: The base model's dtype.
        config: ``LlamaConfig`` keyword arguments.
        batch, seq: Section 2's batch (rows x tokens).
        mixed_batch: Section 3's rows (same ``seq``).
    """

    name: str
    device: str
    dtype: torch.dtype
    config: dict[str, Any]
    batch: int
    seq: int
    mixed_batch: int


def cpu_setting() -> Setting:
    """The issue's small Llama: hidden 512, MLP 1376, 8 layers; batch 8 x 128, fp32."""
    return Setting("cpu", "cpu", torch.float32,
                   dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048),
                   batch=8, seq=128, mixed_batch=32)


def cuda_setting() -> Setting:
    """Llama-3.2-1B's shape in bf16, sequence 1024 (random weights)."""
    return Setting("cuda", "cuda", torch.bfloat16,
                   dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=4096,
                        rope_theta=500000.0, tie_word_embeddings=True),
                   batch=8, seq=1024, mixed_batch=32)


def sync_for(setting: Setting) -> Any:
    """The clock barrier for a setting (CUDA kernels run asynchronously)."""
    return torch.cuda.synchronize if setting.device == "cuda" else None


def build_llama(setting: Setting, seed: int = 0) -> nn.Module:
    """A random ``LlamaForCausalLM`` of the setting's shape, in eval mode, on its device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**setting.config))
    return model.to(device=setting.device, dtype=setting.dtype).eval()


def clone(model: nn.Module) -> nn.Module:
    """An independent copy (same values)."""
    return copy.deepcopy(model)


def lora_spec(names: list[str], rank: int = 16, alpha: int = 32, on: str = ALL_LINEAR,
              extra: str = "") -> str:
    """A spec with one LoRA delta and one task per name (``task t = t_lora``), plus ``extra`` statements."""
    parts = ["adaptlang 1"]
    for name in names:
        parts.append(f"lora {name}_lora {{\n    on {on}\n    rank {rank}\n    alpha {alpha}\n    dropout 0\n}}")
        parts.append(f"task {name} = {name}_lora")
    return "\n".join(parts + ([extra] if extra else [])) + "\n"


#: The block Linears of a Llama-family model by name: what ``ALL_LINEAR`` matches. (PEFT's
#: ``"all-linear"`` would also wrap Mixtral's fused 3-D expert weights and its router.)
LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_lora_config(rank: int = 16, alpha: int = 32) -> Any:
    """PEFT's LoRA config matching :func:`lora_spec` (every block Linear, dropout 0)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LINEAR_NAMES)


def randomize(adapted: Any, deltas: list[str], seed: int = 1, scale: float = 0.02) -> None:
    """Fills the deltas' parameters with small random values (so B, ``up``... change outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for delta in deltas:
            for key, p in sorted(adapted.delta_parameters(delta).items()):
                p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.device, p.dtype))


def copy_lora_to_peft(adapted: Any, delta: str, peft_model: Any, adapter: str) -> int:
    """Copies our LoRA delta's factors into a PEFT adapter (same layout); returns the tensors copied."""
    root = peft_model.base_model.model
    n = 0
    with torch.no_grad():
        for key, p in adapted.delta_parameters(delta).items():
            path, name = key.rsplit("/", 1)
            layer = root.get_submodule(path)
            getattr(layer, name)[adapter].weight.copy_(p)
            n += 1
    return n


def copy_prompt_to_peft(adapted: Any, delta: str, peft_model: Any, adapter: str = "default") -> None:
    """Copies our prompt vectors into PEFT's prompt-tuning embedding."""
    (value,) = adapted.delta_parameters(delta).values()
    with torch.no_grad():
        peft_model.prompt_encoder[adapter].embedding.weight.copy_(value)


def lora_flops_ratio(config: dict[str, Any], rank: int, tokens_head: int, tokens: int) -> float:
    """The arithmetic floor: (base + LoRA) / base multiply-adds of one forward.

    Counts the block Linears, the attention products and the LM head on
    ``tokens_head`` positions; norms and activations are left out (they are
    the same for both).
    """
    d, m, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    shapes = [(d, heads * head_dim), (d, kv * head_dim), (d, kv * head_dim), (heads * head_dim, d),
              (d, m), (d, m), (m, d)]
    linear = sum(i * o for i, o in shapes) * tokens * layers
    lora = sum(rank * (i + o) for i, o in shapes) * tokens * layers
    head = d * config["vocab_size"] * tokens_head
    return (linear + lora + head) / (linear + head)
