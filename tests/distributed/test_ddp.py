"""DDP after ``adaptlang.apply``: exact for every delta kind, and task switches that need a new wrapper say so.

DDP averages the gradients of the parameters that required grad when it was
built. ``adapted.wrap_ddp()`` builds it for the active task; after a
``use()`` that changes what trains, that wrapper refuses to run (it would
leave the new task's gradients unaveraged: each rank would train its own
copy), and a new ``wrap_ddp()`` trains exactly like one process again.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import run_ranks
from tests.distributed.sharding import KINDS, batch, build, max_diff, my_rows, sgd, spec_of

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

SPEC = """adaptlang 1
lora a {
 on layers[*].self_attn.{q_proj, v_proj}
 rank 4
}
adapter b {
 after layers[*].mlp
 size 8
}
task ta = a
task tb = frozen(a) + b
task ta_half = 0.5 * a + frozen(b)
"""


def every_kind_under_ddp() -> dict[str, float]:
    """Per rank: each kind, 3 SGD steps through ``wrap_ddp`` on half the batch vs one process on all of it."""
    import adaptlang

    ids = batch()
    out = {}
    for kind in KINDS:
        ref = build()
        ref_handle = adaptlang.apply(ref, spec_of(kind))
        sgd(ref, ref_handle, ids)
        model = build()
        adapted = adaptlang.apply(model, spec_of(kind))
        sgd(adapted.wrap_ddp(), adapted, my_rows(ids))
        out[kind] = max_diff(adapted.full_adapter_state_dict(), ref_handle.full_adapter_state_dict())
    return out


def test_every_kind_under_ddp_equals_one_process() -> None:
    for per_kind in run_ranks(every_kind_under_ddp, timeout=120):
        assert per_kind.keys() == KINDS.keys()
        assert all(v <= 1e-6 for v in per_kind.values()), per_kind


def switch_under_ddp() -> dict[str, object]:
    """Per rank: train ta, switch to tb; the old wrapper refuses; a new one trains like one process."""
    import adaptlang

    ids = batch()
    ref = build()
    ref_handle = adaptlang.apply(ref, SPEC)
    sgd(ref, ref_handle, ids, 2)
    ref_handle.use("tb")
    sgd(ref, ref_handle, ids, 2)

    model = build()
    adapted = adaptlang.apply(model, SPEC)
    old = adapted.wrap_ddp()
    sgd(old, adapted, my_rows(ids), 1)
    adapted.use("ta_half")  # the same parameters train: the wrapper still fits
    with torch.no_grad():
        old(input_ids=my_rows(ids))
    adapted.use("ta")
    sgd(old, adapted, my_rows(ids), 1)
    adapted.use("tb")
    try:
        old(input_ids=my_rows(ids))
        refused = None
    except adaptlang.AdaptError as exc:
        refused = str(exc)
    sgd(adapted.wrap_ddp(), adapted, my_rows(ids), 2)
    from torch.nn.parallel import DistributedDataParallel

    try:
        adaptlang.apply(DistributedDataParallel(build()), SPEC)  # deltas added now would not be averaged
        wrapped = None
    except adaptlang.AdaptError as exc:
        wrapped = str(exc)
    return {"refused": refused, "wrapped": wrapped,
            "ta": max_diff(adapted.full_adapter_state_dict("ta"), ref_handle.full_adapter_state_dict("ta")),
            "tb": max_diff(adapted.full_adapter_state_dict("tb"), ref_handle.full_adapter_state_dict("tb"))}


def test_a_task_switch_needs_a_new_ddp_wrapper_and_says_so() -> None:
    for r in run_ranks(switch_under_ddp, timeout=90):
        assert "was built while task 'ta' was active; task 'tb' trains other parameters" in r["refused"]
        assert "wrap again after use()" in r["refused"]
        assert "wrapped in DistributedDataParallel" in r["wrapped"]
        assert r["ta"] <= 1e-6 and r["tb"] <= 1e-6, r
