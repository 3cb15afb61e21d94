"""Train one task of a spec on a tiny random Llama: apply, train, inspect, remove.

Run from anywhere (CPU, a few seconds)::

    python examples/train_one_task.py            # 100 steps
    python examples/train_one_task.py --steps 10

The model is built from a config with random weights (nothing is
downloaded). The spec is ``specs/lora.adapt``: LoRA on every layer's query
and value projections. The toy task is counting: after ``2 3 4`` comes
``5`` (modulo 8), which the frozen random model cannot do and the LoRA
deltas learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adaptlang

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lora.adapt"
COUNT = 8  # tokens 0..7; sequences count up modulo 8


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama, hidden 32, random weights (a larger init range so logits are not all alike)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.2)
    return LlamaForCausalLM(config)


def counting_batch(gen: torch.Generator, rows: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    """Sequences ``s, s+1, s+2, ...`` (mod 8) from random starts; the labels are the inputs (causal LM)."""
    start = torch.randint(0, COUNT, (rows, 1), generator=gen)
    ids = (start + torch.arange(length)) % COUNT  # (rows, length)
    return {"input_ids": ids, "labels": ids}


@torch.no_grad()
def accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Share of next tokens the model predicts right (greedy)."""
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]  # (rows, length - 1, vocab)
    return (logits.argmax(-1) == batch["input_ids"][:, 1:]).float().mean().item()


def main(steps: int) -> None:
    torch.set_num_threads(1)
    model = build_model()
    test = counting_batch(torch.Generator().manual_seed(99))
    model.eval()
    base_params = sum(p.numel() for p in model.parameters())
    print(f"base model: next-token accuracy {accuracy(model, test):.0%} on counting")

    adapted = adaptlang.apply(model, SPEC)  # patches the model in place; the base is frozen
    trains = sum(p.numel() for p in adapted.parameters())  # the active task's trainable tensors
    print(f"applied {SPEC.name}: tasks {adapted.tasks}, training {trains:,} "
          f"parameters; the model's own {base_params:,} are frozen")

    optimizer = torch.optim.AdamW(adapted.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, steps + 1):
        loss = model(**counting_batch(gen)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 20 == 0 or step == steps:
            print(f"  step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    print(f"adapted model: next-token accuracy {accuracy(model, test):.0%} on counting")

    adapted.remove()  # the very same model as before apply
    print(f"after remove(): accuracy {accuracy(model, test):.0%} (the original model again)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    main(parser.parse_args().steps)
