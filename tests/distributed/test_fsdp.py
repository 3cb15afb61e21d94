"""Sharded training (FSDP2's ``fully_shard``, FSDP1 with ``use_orig_params=True``) for every delta kind.

Per kind, on 2 gloo ranks, after ``adaptlang.apply`` then sharding:

* ``trainable_parameters()`` returns the live (sharded) parameters, the same
  number as unsharded, and an optimizer built from them trains;
* 3 SGD steps on each rank's half of the batch equal one process training
  the unsharded model on the whole batch, within 1e-6 (the values move by
  1e-3 or more, so the comparison means something: asserted too);
* ``save()`` on every rank writes one bundle (rank 0 writes), which loads
  onto an unsharded model with the same values and logits as the reference.

And on a sharded model: ``use()`` switches tasks (training after a switch
equals the reference), merge/unmerge/remove and a tune-slot swap refuse
with an error naming the engine, FSDP1 saves inside ``summon_full_params``
and training goes on afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import run_ranks
from tests.distributed.sharding import KINDS, batch, build, max_diff, my_rows, sgd, shard, spec_of

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

ENGINE_NAMES = {"fsdp2": "FSDP2", "fsdp1": "FSDP1"}


def train_every_kind(engine: str, folder: str) -> dict[str, dict[str, float | str]]:
    """Per rank: each kind trained sharded vs the unsharded reference, saved, loaded back."""
    import adaptlang
    from torch.distributed.tensor import DTensor

    ids = batch()
    out: dict[str, dict[str, float | str]] = {}
    for kind in KINDS:
        spec = spec_of(kind)
        ref = build()
        ref_handle = adaptlang.apply(ref, spec)
        start = ref_handle.full_adapter_state_dict()
        sgd(ref, ref_handle, ids)
        want = ref_handle.full_adapter_state_dict()

        model = build()
        adapted = adaptlang.apply(model, spec)
        call = shard(model, engine)
        live = adapted.trainable_parameters()
        if engine == "fsdp2":
            assert all(isinstance(p, DTensor) for _, p in live), kind
        sgd(call, adapted, my_rows(ids))
        got = adapted.full_adapter_state_dict()
        with torch.no_grad():  # inference through the sharded model (stacked factors: the cached concatenation)
            sharded_logits = (call(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
        (path,) = adapted.save(Path(folder) / kind)  # every rank calls; rank 0 writes

        fresh = build()
        loaded = adaptlang.load(fresh, path)
        with torch.no_grad():
            logits = (fresh(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
        out[kind] = {
            "engine": str(adapted.sharded()), "trainable": len(live),
            "trainable_ref": len(ref_handle.trainable_parameters()),
            "train": max_diff(got, want), "moved": min((want[k] - start[k]).abs().max().item() for k in want),
            "load": max_diff(loaded.full_adapter_state_dict(), want), "logits": logits,
            "sharded_logits": sharded_logits,
        }
    return out


@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1"])
def test_every_kind_trains_saves_and_loads_like_one_process(engine: str, tmp_path: Path) -> None:
    results = run_ranks(train_every_kind, args=(engine, str(tmp_path)), timeout=150)
    assert results[0].keys() == KINDS.keys()
    bad = []
    for rank, per_kind in enumerate(results):
        for kind, r in per_kind.items():
            ok = (r["engine"].startswith(ENGINE_NAMES[engine]) and r["trainable"] == r["trainable_ref"] > 0
                  and r["train"] <= 1e-6 and r["moved"] >= 1e-3 and r["load"] <= 1e-6 and r["logits"] <= 1e-4
                  and r["sharded_logits"] <= 1e-4)
            if not ok:
                bad.append((rank, kind, r))
    assert not bad, bad
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(KINDS)
    assert all(sorted(q.name for q in (tmp_path / k).iterdir()) == ["t.safetensors"] for k in KINDS)


SWITCH_SPEC = """adaptlang 1
lora a {
 on layers[*].self_attn.{q_proj, v_proj}
 rank 4
}
lora b {
 on layers[*].mlp.down_proj
 rank 2
}
ia3 c {
 on layers[*].self_attn.k_proj
}
tune h {
 params lm_head.weight
}
task ta = a + c
task tb = frozen(a) + b
task th = b + h
"""


def _switching(call, adapted, ids) -> list[int]:
    """ta for 2 steps, tb for 2, ta for 1; returns the trainable counts seen."""
    counts = []
    for task, steps in (("ta", 2), ("tb", 2), ("ta", 1)):
        adapted.use(task)
        counts.append(len(adapted.trainable_parameters()))
        sgd(call, adapted, ids, steps)
    return counts


def switch_and_refuse(engine: str, folder: str) -> dict[str, object]:
    """Per rank: task switches on a sharded model vs the reference; what must refuse, refuses."""
    import adaptlang
    from torch.distributed.fsdp import FullyShardedDataParallel

    ids = batch()
    ref = build()
    ref_handle = adaptlang.apply(ref, SWITCH_SPEC)
    ref_counts = _switching(ref, ref_handle, ids)
    model = build()
    adapted = adaptlang.apply(model, SWITCH_SPEC)
    call = shard(model, engine)
    counts = _switching(call, adapted, my_rows(ids))
    out: dict[str, object] = {"counts": counts, "ref_counts": ref_counts}
    for task in ("ta", "tb"):
        out[task] = max_diff(adapted.full_adapter_state_dict(task), ref_handle.full_adapter_state_dict(task))
    errors = {}
    for what in ("merge", "remove", "use_th"):
        try:
            if what == "use_th":
                adapted.use("th")
            else:
                getattr(adapted, what)()
            errors[what] = None
        except adaptlang.AdaptError as exc:
            errors[what] = str(exc)
    merged_model = build()
    merged = adaptlang.apply(merged_model, SWITCH_SPEC)
    merged.merge()  # before sharding: the merged weights are sharded as they are
    shard(merged_model, engine)
    try:
        merged.unmerge()
        errors["unmerge"] = None
    except adaptlang.AdaptError as exc:
        errors["unmerge"] = str(exc)
    # Loading values into a sharded model: each FSDP2 rank writes its shard (after a no-grad forward, which
    # leaves the root unsharded); FSDP1 refuses.
    with torch.no_grad():
        call(input_ids=ids)
    values = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
              for k, v in ref_handle.full_adapter_state_dict("th").items()}
    try:
        adapted.load_adapter_state_dict(values, "th")
        out["loaded"] = max_diff(adapted.full_adapter_state_dict("th"), values)
    except adaptlang.AdaptError as exc:
        out["loaded"] = str(exc)
    bare = build()
    shard(bare, engine)
    try:
        adaptlang.apply(bare, SWITCH_SPEC)
        errors["apply"] = None
    except adaptlang.AdaptError as exc:
        errors["apply"] = str(exc)
    out["errors"] = errors
    out["active"] = adapted.active_task
    if engine == "fsdp1":
        try:  # the handle holds the inner model, which sees FSDP1's flat shards: refused, not a torch error
            adapted(input_ids=ids)
            out["handle_call"] = None
        except adaptlang.AdaptError as exc:
            out["handle_call"] = str(exc)
        # Saving inside summon_full_params (every rank holds full values) writes the same bundle, and the
        # engine can still reshard afterwards (the bundle holds copies, not the engine's storage).
        saved_ref = ref_handle.full_adapter_state_dict("ta")
        with FullyShardedDataParallel.summon_full_params(call, writeback=False):
            (inside,) = adapted.save(Path(folder) / "inside", tasks=["ta"])
        out["inside"] = max_diff(adaptlang.load(build(), inside).full_adapter_state_dict(), saved_ref)
        sgd(call, adapted, my_rows(ids), 1)
        sgd(ref, ref_handle, ids, 1)
        out["after_summon"] = max_diff(adapted.full_adapter_state_dict("ta"), ref_handle.full_adapter_state_dict("ta"))
    return out


@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1"])
def test_switching_tasks_on_a_sharded_model_and_what_refuses(engine: str, tmp_path: Path) -> None:
    results = run_ranks(switch_and_refuse, args=(engine, str(tmp_path)), timeout=120)
    for r in results:
        assert r["counts"] == r["ref_counts"] and r["counts"][0] != r["counts"][1]
        assert r["ta"] <= 1e-6 and r["tb"] <= 1e-6, r
        errors = r["errors"]
        name = ENGINE_NAMES[engine]
        assert f"merge() is not supported on a model sharded by {name}" in errors["merge"]
        assert f"remove() is not supported on a model sharded by {name}" in errors["remove"]
        assert f"unmerge() is not supported on a model sharded by {name}" in errors["unmerge"]
        assert f"this model is already sharded by {name}" in errors["apply"] and "apply first" in errors["apply"]
        # The tune slot holds the sharded original; th needs h's copy there: refused, nothing changed.
        assert "'lm_head.weight' holds the original's values, sharded by" in errors["use_th"]
        assert r["active"] == "ta"
        if engine == "fsdp1":
            assert r["inside"] <= 1e-6 and r["after_summon"] <= 1e-6
            assert "load_adapter_state_dict() is not supported on a model wrapped by FSDP1" in r["loaded"]
            assert "this model is wrapped by FSDP1: calling it through its adaptlang handle" in r["handle_call"]
        else:
            assert r["loaded"] == 0.0


EVAL_SPEC = """adaptlang 1
lora a {
 on layers[*].self_attn.{q_proj, v_proj}
 rank 4
}
prompt p {
 tokens 3
 init random
}
task ta = a
task tpa = p + a
task tp = p
"""


def _eval_then_switch(call, adapted, ids) -> None:
    """ta one step, an evaluation forward without gradients, then tpa for 2 steps (the prompt is in the root group)."""
    sgd(call, adapted, ids, 1)
    with torch.no_grad():
        call(input_ids=ids)
    adapted.use("tpa")
    sgd(call, adapted, ids, 2)


def after_an_evaluation(folder: str) -> dict[str, object]:
    """Per rank (FSDP2): a task switch after a no-grad forward; saves and handle calls that must refuse."""
    import adaptlang

    ids = batch()
    ref = build()
    ref_handle = adaptlang.apply(ref, EVAL_SPEC)
    _eval_then_switch(ref, ref_handle, ids)
    model = build()
    adapted = adaptlang.apply(model, EVAL_SPEC)
    call = shard(model, "fsdp2")
    _eval_then_switch(call, adapted, my_rows(ids))
    out: dict[str, object] = {"tpa": max_diff(adapted.full_adapter_state_dict("tpa"),
                                              ref_handle.full_adapter_state_dict("tpa"))}
    # Ranks that ask for different tasks (same shapes) must not write one file of both.
    try:
        adapted.save(Path(folder) / "mixed", tasks=["ta" if dist.get_rank() == 0 else "tp"])
        out["different_tasks"] = None
    except adaptlang.AdaptError as exc:
        out["different_tasks"] = str(exc)
    try:
        adapted.full_adapter_state_dict("ta" if dist.get_rank() == 0 else "tp")
        out["different_gather"] = None
    except adaptlang.AdaptError as exc:
        out["different_gather"] = str(exc)
    out["written"] = sorted(p.name for p in Path(folder).rglob("*.safetensors"))
    return out


def test_a_switch_after_an_evaluation_trains_the_root_group_and_ranks_must_agree(tmp_path: Path) -> None:
    """After a no-grad forward FSDP2 leaves the root's parameters unsharded: flags must still reach the shards."""
    for r in run_ranks(after_an_evaluation, args=(str(tmp_path),), timeout=120):
        assert r["tpa"] <= 1e-6, r
        assert "the ranks called save(tasks=..., dtype=...) with different arguments" in r["different_tasks"]
        assert "the ranks asked for different delta values to gather" in r["different_gather"]
        assert r["written"] == []
