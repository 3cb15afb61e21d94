"""Delta parameters are read through the module tree at each use (runtime/refs.py, runtime/shards.py).

A distributed engine replaces parameter objects after ``apply``; here that
is done by hand (a new ``nn.Parameter`` in the slot, as FSDP2 does), in one
process, and everything adaptlang does with parameters must follow: the
forward, gradients, ``trainable_parameters()``, ``use()``'s flags, the state
dict and saved bundles, and a ``tune`` copy taken out of its slot and put back.
The sharded-tensor helpers are checked on tensors marked the way FSDP1 and
ZeRO-3 mark theirs (the multi-process tests are in tests/distributed/).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adaptlang
from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.shards import FSDP1, ZERO3, _join_flat, gather_full, sharding_engine
from tests.runtime.adapted_support import tiny_llama

SPEC = """adaptlang 1
lora a {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
lora b {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 2
}
tune h {
    params lm_head.weight
}
task ta = a + b
task tb = frozen(a) + h
"""
Q0 = "model.layers.0.self_attn.q_proj"


def replace_params(module: nn.Module, scale: float) -> dict[str, nn.Parameter]:
    """Puts a new Parameter (old values times ``scale``, same flag) in every slot of ``module``, as an engine does."""
    new = {}
    for name, p in list(module._parameters.items()):
        if p is not None:
            new[name] = module._parameters[name] = nn.Parameter(p.detach() * scale, requires_grad=p.requires_grad)
    return new


def test_replaced_lora_factors_are_the_ones_used_trained_listed_and_saved(tmp_path) -> None:
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPEC)
    part = adapted.model.get_submodule(Q0).parts["a"]
    with torch.no_grad():
        part.lora_B.normal_()  # a nonzero delta, so that the factors' values show in the output
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits
    new = replace_params(part, 2.0)  # B doubled and A doubled: the delta is four times as large
    after = model(input_ids=ids).logits
    assert not torch.allclose(before, after)  # the forward reads the new objects

    live = {id(p) for _, p in adapted.trainable_parameters()}
    assert {id(new["lora_A"]), id(new["lora_B"])} <= live
    model(input_ids=ids, labels=ids).loss.backward()
    assert new["lora_A"].grad is not None and new["lora_B"].grad is not None  # gradients land on them

    adapted.use("tb")  # a frozen: the flags go on the live objects
    assert not new["lora_A"].requires_grad and not new["lora_B"].requires_grad
    adapted.use("ta")
    assert new["lora_A"].requires_grad
    state = adapted.adapter_state_dict("ta")
    assert torch.equal(state[f"a/{Q0}/lora_B"], new["lora_B"].detach())
    (path,) = adapted.save(tmp_path, tasks=["ta"])
    loaded = adaptlang.load(tiny_llama(), path)
    assert torch.equal(loaded.delta_parameters("a")[f"{Q0}/lora_B"], new["lora_B"].detach())


def test_a_tune_copy_replaced_in_its_slot_is_kept_when_the_slot_changes_hands() -> None:
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPEC, task="tb")
    original = adapted._patch.tune.originals[("lm_head", "weight")]
    (swapped,) = replace_params(model.lm_head, 3.0).values()  # the engine's object for h's copy
    assert adapted.delta_parameters("h")["lm_head/weight"] is swapped
    adapted.use("ta")  # h leaves the slot: the original comes back, the replaced copy is kept as h's
    assert model.lm_head._parameters["weight"] is original
    assert adapted.delta_parameters("h")["lm_head/weight"] is swapped
    adapted.use("tb")
    assert model.lm_head._parameters["weight"] is swapped and swapped.requires_grad
    adapted.use("ta")
    adapted.remove()
    assert model.lm_head._parameters["weight"] is original  # remove() still puts the very object back


def test_the_engines_are_told_apart_by_their_marks() -> None:
    plain, flat, zero = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    flat._fsdp_flattened = True
    zero.ds_id = 7
    assert [sharding_engine(t) for t in (plain, flat, zero)] == [None, FSDP1, ZERO3]


def test_gathering_refuses_what_it_cannot_gather() -> None:
    zero = torch.zeros(3)
    zero.ds_id = 7
    with pytest.raises(RuntimeApplyError, match="sharded but no process group is running"):
        gather_full({"x": zero}, {"x": (3,)})
    flat = torch.zeros(2)
    flat._fsdp_flattened = True
    with pytest.raises(RuntimeApplyError, match="sharded but no process group is running"):
        gather_full({"x": flat}, {"x": (4,)})
    out = gather_full({"x": torch.arange(6.0).view(2, 3)}, {"x": (2, 3)})
    assert torch.equal(out["x"], torch.arange(6.0).view(2, 3))
    with pytest.raises(RuntimeApplyError, match=r"gave shape \(2, 3\), not its full shape \(3, 2\)"):
        gather_full({"x": torch.zeros(2, 3)}, {"x": (3, 2)})


def test_gathering_zero3_without_deepspeed_says_so(tmp_path, monkeypatch) -> None:
    """A ZeRO-3 parameter where ``import deepspeed`` fails: a clear error, not a wrong file."""
    import sys

    import torch.distributed as dist

    param = nn.Parameter(torch.empty(0))  # ZeRO-3's placeholder outside a forward
    param.ds_id, param.ds_shape = 0, torch.Size((2, 3))
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeApplyError, match="sharded by DeepSpeed ZeRO-3, but deepspeed cannot be imported"):
            gather_full({"x": param}, {"x": (2, 3)})
    finally:
        dist.destroy_process_group()


def test_loading_values_into_zero3_parameters_is_refused() -> None:
    """They would not last: ZeRO-3's optimizer writes its own copy back at every step (tests/distributed)."""
    adapted = adaptlang.apply(tiny_llama(), SPEC)
    values = adapted.full_adapter_state_dict()
    before = {k: v.clone() for k, v in values.items()}
    next(iter(adapted.delta_parameters("a").values())).ds_id = 3  # as ZeRO-3 marks the parameters it partitions
    with pytest.raises(RuntimeApplyError, match=r"load_adapter_state_dict\(\) is not supported on a model sharded "
                                                r"by DeepSpeed ZeRO-3(.|\n)*before deepspeed.initialize"):
        adapted.load_adapter_state_dict({k: torch.zeros_like(v) for k, v in values.items()})
    assert all(torch.equal(v, before[k]) for k, v in adapted.adapter_state_dict().items())  # nothing written


def test_fsdp1_pieces_join_in_rank_order() -> None:
    full = torch.arange(10.0).view(2, 5)
    # Rank 0 holds the first 7 values of the flattened parameter, rank 1 the last 3 (FlatParamHandle's cut).
    assert torch.equal(_join_flat([full.flatten()[:7], full.flatten()[7:]], (2, 5), "w"), full)
    assert torch.equal(_join_flat([full.flatten()[:0], full.flatten()], (2, 5), "w"), full)
    # Inside summon_full_params every rank holds all of it.
    assert torch.equal(_join_flat([full.flatten(), full.flatten()], (2, 5), "w"), full)
    with pytest.raises(RuntimeApplyError, match=r"hold \[4, 3\] values, not 10"):
        _join_flat([full.flatten()[:4], full.flatten()[4:7]], (2, 5), "w")


def test_merge_and_remove_refuse_a_sharded_parameter_and_change_nothing() -> None:
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPEC)
    model.model.embed_tokens.weight._fsdp_flattened = True  # as FSDP1 marks the parameters it manages
    with pytest.raises(RuntimeApplyError, match=r"merge\(\) is not supported on a model sharded by FSDP1"):
        adapted.merge()
    assert not adapted.merged
    with pytest.raises(RuntimeApplyError, match=r"remove\(\) is not supported"):
        adapted.remove()
    assert adapted.active_task == "ta"
    with pytest.raises(RuntimeApplyError, match="this model is already sharded by FSDP1"):
        adaptlang.apply(tiny_llama_marked(), SPEC)


def tiny_llama_marked() -> nn.Module:
    model = tiny_llama()
    model.lm_head.weight._fsdp_flattened = True
    return model
