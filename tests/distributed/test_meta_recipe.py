"""The large-model recipe on two ranks (CPU, gloo) against one process training the real model.

Each rank: build on the meta device, ``apply``, ``fully_shard`` every layer
and the root, ``to_empty``, load the safetensors checkpoint (rank 0 reads it,
``set_model_state_dict`` broadcasts), ``init_deltas()``, train SGD steps on
its half of each batch, ``save()`` (collective). The reference: one process,
the real model, ``apply`` with the same seed, the same SGD on each whole
(concatenated) batch. FSDP2 averages the two ranks' gradients of their
mean losses; each half holds the same number of tokens, so that average is
the gradient of the whole batch's mean loss, and the two runs differ only
by rounding (summation order). The spec has every kind the meta recipe
supports, DoRA, a prompt from vocabulary rows and a tune copy included.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import adaptlang
from tests.distributed.launch import run_ranks

SPEC = """adaptlang 1
lora qv { on layers[*].self_attn.{q_proj, v_proj}
 rank 4
 alpha 8 }
lora out { on layers[*].self_attn.o_proj
 rank 2
 variant dora }
ia3 scale { on layers[*].mlp.down_proj
 feedforward true }
adapter mlp { after layers[*].mlp
 size 4 }
prompt lead { tokens 2
 init vocab }
tune head_norm { params norm }
"""
SEED, STEPS, LR, ROWS, WORLD = 5, 4, 0.2, 8, 2
TOLERANCE = 1e-6  # rounding of sums in another order, after STEPS steps (measured: about 1e-7)
TIMEOUT_S = 90  # a hung collective fails this test instead of the whole run


def build_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       initializer_range=0.2)


def batches() -> list[torch.Tensor]:
    """Every step's whole batch of counting sequences (ROWS x 10): the same on every rank and here."""
    gen = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 8, (ROWS, 1), generator=gen) + torch.arange(10)) % 8 for _ in range(STEPS)]


def sharded_from_meta(config, spec: str, shards: list[Path]):
    """The recipe up to the training: meta build, apply, fully_shard, to_empty, load ``shards`` (rank 0 reads).

    Returns ``(model, adapted, checkpoint)``: the checkpoint rank 0 read (empty on the others), as read.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    adapted = adaptlang.apply(model, spec, seed=SEED)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    checkpoint = {}
    if dist.get_rank() == 0:
        for shard in shards:
            checkpoint.update(load_file(shard))
    # A copy: set_model_state_dict adds to the dict it is given.
    set_model_state_dict(model, dict(checkpoint), options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=False))
    for name, value in type(model.model.rotary_emb)(config).named_buffers():
        model.model.rotary_emb.get_buffer(name).copy_(value)
    return model, adapted, checkpoint


def rank_main(folder: str) -> dict:
    """One rank of the recipe (see the module docstring); returns what the tests check (rank 0: all of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(folder)
    model, adapted, checkpoint = sharded_from_meta(build_config(), SPEC,
                                                   sorted((out / "base").glob("*.safetensors")))
    with torch.no_grad():  # say, a look at the base first: FSDP2 then leaves the root's parameters unsharded
        model(input_ids=batches()[0][:1])
    adapted.init_deltas()

    # Gathered from every rank's shards: a rank that loaded nothing shows here.
    loaded = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    initial = adapted.full_adapter_state_dict()
    base = [p for p in model.parameters() if not p.requires_grad]
    held = [None] * world
    dist.all_gather_object(held, sum(p.to_local().nbytes for p in base))

    optimizer = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=LR)
    model.train()
    for ids in batches():
        mine = ids.chunk(world)[rank]
        loss = model(input_ids=mine, labels=mine).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    paths = adapted.save(out / "bundles")
    if rank != 0:
        return {}
    return {
        "bundle": str(paths[0]), "held": held, "initial": initial,
        "total": sum(p.numel() * p.element_size() for p in base),
        # FSDP2 cuts each tensor's dim 0 in `world` chunks (torch.chunk): a rank may hold one row more.
        "slack": sum(p.numel() // p.shape[0] * p.element_size() for p in base),
        "missing": sorted(set(checkpoint) - set(loaded)),
        "differ": sorted(k for k, v in checkpoint.items() if k in loaded and not torch.equal(loaded[k], v)),
    }


def real_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(build_config())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta_recipe")
    real_model().save_pretrained(folder / "base", max_shard_size="20KB")  # several shards, as a large model
    start = time.monotonic()
    result = run_ranks(rank_main, world=WORLD, timeout=TIMEOUT_S, args=(str(folder),))[0]
    result["seconds"] = time.monotonic() - start
    return folder, result


@pytest.fixture(scope="module")
def one_process():
    """One process: the real model, apply, SGD on each whole batch. Returns (initial values, trained handle)."""
    model = real_model()
    adapted = adaptlang.apply(model, SPEC, seed=SEED)
    initial = {k: v.clone() for k, v in adapted.adapter_state_dict().items()}
    optimizer = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=LR)
    model.train()
    for ids in batches():
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial, adapted


def test_the_checkpoint_has_several_shards_and_every_base_weight_loaded(run):
    folder, result = run
    assert len(list((folder / "base").glob("*.safetensors"))) >= 3
    assert result["missing"] == [] and result["differ"] == []


def test_initial_values_equal_apply_on_one_process_bit_for_bit(run, one_process):
    sharded = run[1]["initial"]
    initial, _ = one_process
    assert list(sharded) == list(initial)
    assert [k for k in initial if not torch.equal(sharded[k], initial[k])] == []


def test_trained_bundle_equals_one_process_on_the_concatenated_batch(run, one_process):
    folder, result = run
    initial, trained = one_process
    fresh = adaptlang.load(real_model(), Path(result["bundle"]))  # onto an unsharded model
    got, want = fresh.adapter_state_dict(), trained.adapter_state_dict()
    assert list(got) == list(want)
    moved = min((want[k] - initial[k]).abs().max().item() for k in want)
    assert moved > 1e-4  # every tensor trained: the equality below is not about untouched values
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= TOLERANCE, f"max |difference| {worst:.2e}"
    print(f"max |difference| from one process: {worst:.2e}; moved at least {moved:.2e}")


def test_each_rank_holds_half_of_the_base(run):
    _, result = run
    held, total = result["held"], result["total"]
    assert sum(held) == total  # the shards cover the base exactly once
    # torch.chunk gives the first ranks ceil(rows / 2) rows of each tensor: at most one row per tensor over.
    assert all(abs(n - total / WORLD) <= result["slack"] for n in held)
    print(f"base bytes per rank {held} of {total} (slack {result['slack']}); {result['seconds']:.1f} s")


TIED_SPEC = "adaptlang 1\ntune head {\n    params lm_head.weight\n}\n"  # one name of the tied tensor


def tied_config():
    from transformers import LlamaConfig

    # As Llama-3.2-1B: one tensor for the embedding and the head, which the checkpoint keeps once.
    return LlamaConfig(**{**build_config().to_dict(), "tie_word_embeddings": True})


def tied_rank_main(folder: str) -> dict:
    """The recipe on a tied model with a tune delta on ``lm_head.weight`` only: initial values and logits."""
    model, adapted, checkpoint = sharded_from_meta(tied_config(), TIED_SPEC,
                                                   list((Path(folder) / "tied").glob("*.safetensors")))
    adapted.init_deltas()
    with torch.no_grad():
        logits = model(input_ids=batches()[0]).logits
    return {"keys": sorted(checkpoint), "initial": adapted.full_adapter_state_dict(), "logits": logits}


def test_a_tied_checkpoint_gives_a_tune_delta_on_one_name_its_values(tmp_path):
    """The checkpoint has no ``lm_head.weight`` (saved once, as the embedding): the copy must come from there."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    real = LlamaForCausalLM(tied_config())
    real.save_pretrained(tmp_path / "tied")
    reference = adaptlang.apply(real, TIED_SPEC, seed=SEED)
    result = run_ranks(tied_rank_main, world=WORLD, timeout=TIMEOUT_S, args=(str(tmp_path),))[0]
    assert "lm_head.weight" not in result["keys"] and "model.embed_tokens.weight" in result["keys"]
    want = reference.full_adapter_state_dict()
    assert result["initial"].keys() == want.keys()
    assert all(torch.equal(result["initial"][k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(result["logits"], real(input_ids=batches()[0]).logits)
