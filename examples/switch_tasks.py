"""Two tasks on one model: train each, then switch between them.

Run from anywhere (CPU, a few seconds)::

    python examples/switch_tasks.py              # 100 steps per task
    python examples/switch_tasks.py --steps 10

One spec declares two LoRA deltas and a task for each: ``count_up`` learns
``2 3 4 -> 5`` and ``count_down`` learns ``5 4 3 -> 2`` (modulo 8).
``adapted.use(task)`` activates exactly one task's deltas and makes only
them trainable; ``with adapted.use(task):`` switches back on exit.
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adaptlang

SPEC = """
adaptlang 1

let r = 8

lora up {
    on    layers[*].self_attn.{q_proj, v_proj}, layers[*].mlp.down_proj
    rank  r
    alpha 2 * r
}

lora down {
    on    layers[*].self_attn.{q_proj, v_proj}, layers[*].mlp.down_proj
    rank  r
    alpha 2 * r
}

task count_up   = up
task count_down = down
"""
COUNT = 8
STEP = {"count_up": 1, "count_down": -1}


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama, hidden 32, random weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.2)
    return LlamaForCausalLM(config)


def counting_batch(step: int, gen: torch.Generator, rows: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    """Sequences ``s, s+step, s+2*step, ...`` modulo 8; labels are the inputs."""
    start = torch.randint(0, COUNT, (rows, 1), generator=gen)
    ids = (start + step * torch.arange(length)) % COUNT  # (rows, length)
    return {"input_ids": ids, "labels": ids}


def train(adapted, task: str, steps: int) -> float:
    """Trains ``task`` (its deltas only) on its counting direction; returns the last loss."""
    adapted.use(task)
    optimizer = torch.optim.AdamW(adapted.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    adapted.model.train()
    for _ in range(steps):
        loss = adapted(**counting_batch(STEP[task], gen)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapted.model.eval()
    return loss.item()


@torch.no_grad()
def next_token(adapted, tokens: list[int]) -> int:
    return adapted(input_ids=torch.tensor([tokens])).logits[0, -1].argmax().item()


def main(steps: int) -> None:
    torch.set_num_threads(1)
    adapted = adaptlang.apply(build_model(), SPEC)
    print(f"tasks: {adapted.tasks}")
    for task in adapted.tasks:
        loss = train(adapted, task, steps)
        trained = sum(p.numel() for p in adapted.parameters())
        print(f"trained {task:<10}  {trained:,} parameters, final loss {loss:.3f}")

    prompt = [2, 3, 4, 5]
    adapted.use("count_up")
    print(f"active: {adapted.active_task:<10}  {prompt} -> {next_token(adapted, prompt)}")
    with adapted.use("count_down"):
        print(f"active: {adapted.active_task:<10}  {prompt} -> {next_token(adapted, prompt)}")
    print(f"active: {adapted.active_task:<10}  {prompt} -> {next_token(adapted, prompt)}  (restored by `with`)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per task (default 100)")
    main(parser.parse_args().steps)
