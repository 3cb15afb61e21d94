"""What the sharded-training tests share: the tiny model, one spec per delta kind, the engines, SGD steps.

Every rank builds the same seeded model; :func:`shard` wraps it the way
users do (per decoder layer, then the root). The reference is one process
training the unsharded model on the whole batch: with equal halves and a
mean loss, the engines' averaged gradients are that process's gradients, so
SGD steps agree to rounding (fp32 sums in another order: ~1e-7).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

SEED_BATCH = 1
ROWS, LENGTH, VOCAB = 4, 8, 64

#: One spec per delta kind (LoRA's variants, bias and a quantized base included); each has one task ``t``.
KINDS = {
    "lora": "lora a {\n on layers[*].self_attn.{q_proj, v_proj}\n rank 4\n}\n",
    "lora_stacked": ("lora a {\n on layers[*].self_attn.{q_proj, v_proj}\n rank 4\n}\n"
                     "lora b {\n on layers[*].self_attn.{q_proj, v_proj}\n rank 2\n alpha 8\n}\n"),
    "rslora_bias": "lora a {\n on layers[*].mlp.** is Linear\n rank 4\n variant rslora\n bias true\n}\n",
    "dora": "lora a {\n on layers[*].self_attn.*_proj\n rank 4\n variant dora\n}\n",
    "ia3": "ia3 a {\n on layers[*].{self_attn.k_proj, mlp.down_proj}\n feedforward true for mlp.down_proj\n}\n",
    "adapter": "adapter a {\n after layers[*].mlp\n size 8\n}\n",
    "prompt": "prompt a {\n tokens 3\n init random\n}\n",
    "tune": "tune a {\n params lm_head.weight, layers[-1:].post_attention_layernorm\n}\n",
    "sparse": "sparse a {\n on layers[*].mlp.down_proj\n density 5%\n}\n",
    "nf4_lora": "quantize nf4 {\n on layers[*].** is Linear\n}\nlora a {\n on layers[*].** is Linear\n rank 4\n}\n",
    "int8_lora": "quantize int8 {\n on layers[*].mlp.** is Linear\n}\nlora a {\n on layers[*].mlp.** is Linear\n rank 4\n}\n",
}


def spec_of(kind: str) -> str:
    """The full spec text for one kind: the header, the delta(s), one task ``t``."""
    task = "task t = a + 0.5 * b\n" if kind == "lora_stacked" else "task t = a\n"
    return "adaptlang 1\n" + KINDS[kind] + task


def build() -> nn.Module:
    """The seeded 2-layer Llama (hidden 32; init range 0.2 so that gradients move the deltas visibly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2)
    return LlamaForCausalLM(cfg)


def batch() -> torch.Tensor:
    """The whole batch of token ids, (ROWS, LENGTH); rank r trains on rows [r*ROWS/w, (r+1)*ROWS/w)."""
    return torch.randint(0, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(SEED_BATCH))


def my_rows(ids: torch.Tensor) -> torch.Tensor:
    """This rank's equal share of the batch."""
    per = ids.shape[0] // dist.get_world_size()
    rank = dist.get_rank()
    return ids[rank * per:(rank + 1) * per]


def shard(model: nn.Module, engine: str) -> nn.Module:
    """Wraps ``model`` for ``engine`` (``fsdp2``, ``fsdp1``, ``ddp``); returns what to call."""
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    if engine == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        from adaptlang.runtime.quant import storage_parameters

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        # FSDP1 flattens floating tensors only: a quantized base's integer storage stays whole on each rank.
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True,
                                        device_id=torch.device("cpu"), ignored_states=storage_parameters(model))
    raise ValueError(engine)


def sgd(call: nn.Module, adapted: Any, ids: torch.Tensor, steps: int = 3, lr: float = 1.0) -> None:
    """``steps`` plain SGD steps on the causal-LM loss, over ``adapted.trainable_parameters()``."""
    opt = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=lr)
    for _ in range(steps):
        call(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference over equal key sets (raises on different keys)."""
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
