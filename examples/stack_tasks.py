"""Stacking LoRA deltas: train one, build a second on top of it frozen, mix them by weight.

Run from anywhere (CPU, a few seconds)::

    python examples/stack_tasks.py               # 100 steps per trained task
    python examples/stack_tasks.py --steps 10

Delta ``one`` learns to count by one (``2 3 4 -> 5``, modulo 8). Task
``plus_two = frozen(one) + two`` then trains only ``two``, on top of
``one``, to count by two. ``blend = 0.5 * one + 0.5 * two`` runs both
deltas at half strength (each LoRA's ``alpha / rank`` scaling times 0.5).
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adaptlang

SPEC = """
adaptlang 1

lora one {
    on    layers[*].self_attn.{q_proj, v_proj}, layers[*].mlp.down_proj
    rank  8
    alpha 16
}

lora two {
    on    layers[*].self_attn.{q_proj, v_proj}, layers[*].mlp.down_proj
    rank  8
    alpha 16
}

task plus_one = one
task plus_two = frozen(one) + two      # two learns on top of one, which stays as trained
task blend    = 0.5 * one + 0.5 * two  # both, at half weight
"""
COUNT = 8


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


def train(adapted, task: str, step: int, steps: int) -> None:
    """Trains whatever ``task`` makes trainable on sequences counting by ``step``."""
    adapted.use(task)
    optimizer = torch.optim.AdamW(adapted.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(step)
    adapted.model.train()
    for _ in range(steps):
        loss = adapted(**counting_batch(step, gen)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapted.model.eval()


@torch.no_grad()
def loss_on(adapted, task: str, step: int) -> float:
    with adapted.use(task):
        return adapted(**counting_batch(step, torch.Generator().manual_seed(99))).loss.item()


def main(steps: int) -> None:
    torch.set_num_threads(1)
    adapted = adaptlang.apply(build_model(), SPEC)

    train(adapted, "plus_one", step=1, steps=steps)
    one_before = {k: v.detach().clone() for k, v in adapted.delta_parameters("one").items()}
    train(adapted, "plus_two", step=2, steps=steps)
    untouched = all(torch.equal(v, one_before[k]) for k, v in adapted.delta_parameters("one").items())
    print(f"trained plus_one, then plus_two on top of it; 'one' unchanged by the second run: {untouched}")

    print(f"{'task':<10} {'trains':>7} {'loss counting by 1':>19} {'by 2':>6}")
    for task in adapted.tasks:
        adapted.use(task)
        trains = sum(p.numel() for p in adapted.parameters())
        print(f"{task:<10} {trains:>7,} {loss_on(adapted, task, 1):>19.3f} {loss_on(adapted, task, 2):>6.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per trained task (default 100)")
    main(parser.parse_args().steps)
