"""Train a task on several processes with FSDP2, never holding the whole model on one: the recipe, tiny.

Run (CPU, two processes, well under a minute)::

    torchrun --nproc-per-node 2 examples/train_fsdp.py
    torchrun --nproc-per-node 2 examples/train_fsdp.py --steps 10 --out run/   # keep the files

A large model does not fit in one process, so no process ever builds it
with values. The order:

1. build the model on the **meta device** (shapes only, no memory);
2. ``adaptlang.apply`` the spec (the deltas are created on meta too);
3. ``fully_shard`` each decoder layer, then the root (FSDP2);
4. ``model.to_empty(device=...)``: each rank allocates only its shards;
5. load the pretrained weights: rank 0 reads the safetensors files and
   ``set_model_state_dict`` sends every rank its shards;
6. ``adapted.init_deltas()``: the delta values ``apply`` would have given
   the real model (same seed), on every rank;
7. train; ``adapted.save(folder)`` on **every** rank (it gathers; rank 0 writes).

The "pretrained" checkpoint here is a small random Llama that rank 0 first
writes in several safetensors shards, as ``save_pretrained`` writes a large
one. The task is counting (``2 3 4 -> 5``, modulo 8), as in train_one_task.py.
At the end rank 0 loads the bundle onto an ordinary, unsharded copy of the
model and checks that it gives the same outputs as the trained sharded model.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils.logging import disable_progress_bar

import adaptlang

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lora.adapt"
CONFIG = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     initializer_range=0.2)
COUNT = 8  # tokens 0..7; sequences count up modulo 8


def counting_batch(gen: torch.Generator, rows: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    """Sequences ``s, s+1, s+2, ...`` (mod 8) from random starts; the labels are the inputs (causal LM)."""
    start = torch.randint(0, COUNT, (rows, 1), generator=gen)
    ids = (start + torch.arange(length)) % COUNT  # (rows, length)
    return {"input_ids": ids, "labels": ids}


def write_checkpoint(folder: Path) -> None:
    """Rank 0: a "pretrained" model, saved as several safetensors shards (as a large model is)."""
    torch.manual_seed(0)
    LlamaForCausalLM(CONFIG).save_pretrained(folder, max_shard_size="20KB")


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard file, on CPU."""
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(shard))
    return weights


def local_bytes(tensors) -> int:
    """Bytes of these parameters that this rank holds (its shards of FSDP2's DTensors)."""
    return sum(t.to_local().nbytes if hasattr(t, "to_local") else t.nbytes for t in tensors)


def main(steps: int, out: str | None) -> None:
    dist.init_process_group("gloo")  # on GPUs: "nccl", and device = torch.device("cuda", local rank)
    rank, world, device = dist.get_rank(), dist.get_world_size(), torch.device("cpu")
    torch.set_num_threads(1)
    disable_progress_bar()
    say = print if rank == 0 else (lambda *args: None)

    # Rank 0 writes the checkpoint (in --out, or a temporary folder); every rank learns where.
    where = [(out or tempfile.mkdtemp(prefix="adaptlang_fsdp_")) if rank == 0 else None]
    dist.broadcast_object_list(where)
    folder = Path(where[0])
    if rank == 0:
        write_checkpoint(folder / "base")
    dist.barrier()
    say(f"checkpoint: {len(list((folder / 'base').glob('*.safetensors')))} safetensors shards in {folder / 'base'}")

    # 1-2. Shapes only; apply creates the deltas on meta as well.
    with torch.device("meta"):
        model = LlamaForCausalLM(CONFIG)
    adapted = adaptlang.apply(model, SPEC, seed=0)

    # 3-4. Shard every decoder layer, then the rest (embeddings, norm, head) with the root.
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device=device)

    # 5. Rank 0 reads the files; set_model_state_dict sends each rank its shards. strict=False: the
    #    checkpoint has no delta tensors (the adapted model keeps the base's own key names). It fills
    #    the dict it is given with its own tensors: pass a copy, the check below reads the checkpoint.
    checkpoint = read_checkpoint(folder / "base") if rank == 0 else {}
    set_model_state_dict(model, dict(checkpoint), options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=False))
    # The rotary frequencies are buffers computed from the config, in no checkpoint: to_empty() left them unset.
    for name, value in type(model.model.rotary_emb)(CONFIG).named_buffers():
        model.model.rotary_emb.get_buffer(name).copy_(value)
    # 6. The deltas' initial values: the same on every rank, and the same as apply() on the real model.
    adapted.init_deltas()

    # Check: every base weight holds the checkpoint's value (gathered to rank 0; every rank joins).
    loaded = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    say(f"every base weight loaded: {all(torch.equal(loaded[k], v) for k, v in checkpoint.items())}")

    # Memory: each rank holds only its shards of the base (apply froze it: the parameters that do not train).
    base = [p for p in model.parameters() if not p.requires_grad]
    full_bytes = sum(p.numel() * p.element_size() for p in base)
    held = [None] * world
    dist.all_gather_object(held, local_bytes(base))
    for r, n in enumerate(held):
        say(f"rank {r} holds {n:,} of the base's {full_bytes:,} bytes ({n / full_bytes:.1%})")

    # 7. Train: each rank takes its share of every batch; FSDP2 averages the gradients.
    optimizer = torch.optim.SGD(adapted.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)  # the same batches on every rank, each keeps its rows
    torch.manual_seed(rank)  # the LoRA dropout: each rank its own masks, the same on every run
    model.train()
    for step in range(1, steps + 1):
        batch = {k: v.chunk(world)[rank] for k, v in counting_batch(gen).items()}
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 10 == 0 or step == steps:
            say(f"  step {step:3d}  loss {loss.item():.3f} (rank 0's rows)")
    model.eval()

    paths = adapted.save(folder / "bundles")  # every rank: gathers the full values, rank 0 writes
    test = counting_batch(torch.Generator().manual_seed(99))
    with torch.no_grad():
        sharded_logits = model(input_ids=test["input_ids"]).logits  # every rank runs the sharded forward

    if rank == 0:
        # An ordinary, unsharded model from the same checkpoint, plus the bundle.
        plain = LlamaForCausalLM.from_pretrained(folder / "base").eval()
        adaptlang.load(plain, paths)
        with torch.no_grad():
            plain_logits = plain(input_ids=test["input_ids"]).logits
        right = (plain_logits[:, :-1].argmax(-1) == test["input_ids"][:, 1:]).float().mean().item()
        print(f"bundle {paths[0].name} loaded onto an unsharded model: next-token accuracy {right:.0%}, "
              f"max |difference| from the sharded model {(plain_logits - sharded_logits).abs().max().item():.1e}")
        if out is None:
            shutil.rmtree(folder)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--out", help="keep the checkpoint and the bundle here (default: a temporary folder)")
    args = parser.parse_args()
    main(args.steps, args.out)
