"""DeepSpeed ZeRO-3 on two CPU ranks (gloo): training, gathering, saving, and what a ZeRO-3 model refuses.

``zero3_ranks.py`` runs once under ``torch.distributed.run`` with
``DS_ACCELERATOR=cpu`` (DeepSpeed's CPU accelerator takes gloo when oneCCL
is not installed). Per kind (LoRA and IA3 with every parameter partitioned;
a bottleneck adapter under DeepSpeed's default persistence threshold, its
small parameters whole on every rank), 3 SGD steps on each rank's half of
the batch must equal one process on the whole batch within 1e-6; ``save()``
on every rank writes one bundle (rank 0), which ``adaptlang.load`` puts on
an unsharded model with those values. On the ZeRO-3 model merge, remove,
loading values and a tune-slot swap refuse, naming DeepSpeed ZeRO-3, while
``use()`` of a task without tune deltas switches the trainable flags.

The same run then trains ``trainer_ranks.py``'s ``Trainer`` under ZeRO-3
with :class:`~adaptlang.bundles.trainer.BundleCallback`, whose bundles are
checked as ``test_trainer.py`` checks DDP's.

deepspeed is a test dependency (pyproject.toml's ``test`` extra); without
it the ranks fail on ``import deepspeed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptlang
from tests.distributed.sharding import build, max_diff
from tests.distributed.test_trainer import assert_bundles_equal_one_process, run_ranks
from tests.distributed.trainer_ranks import STEPS, TASK, build_model, probe

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

HERE = Path(__file__).resolve().parent
ZERO3 = "DeepSpeed ZeRO-3"


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    """The one two-rank run (the slow part), shared by the tests below."""
    out = tmp_path_factory.mktemp("zero3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DS_ACCELERATOR", "cpu")  # the ranks inherit the environment
        run_ranks(HERE / "zero3_ranks.py", str(out))
    return out / "kinds", [torch.load(out / "kinds" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def trainer_run(zero3_run):
    out = zero3_run[0].parent / "trainer"
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_training_under_zero3_equals_one_process(zero3_run):
    _, records = zero3_run
    for rank, per_kind in enumerate(records):
        assert list(per_kind) == ["lora", "ia3", "prompt", "adapter"]
        for kind, r in per_kind.items():
            where = f"rank {rank}, {kind}"
            assert r["engine"] == ZERO3, where
            # The live ZeRO-3 parameters, the same names as before the engine: only placeholders hold data.
            assert r["trainable"] == r["trainable_before"] and r["trainable"], where
            assert r["all_zero3"] and r["placeholder_numel"] == 0, where
            assert min((r["want"][k] - r["start"][k]).abs().max().item() for k in r["want"]) > 1e-3, where
            assert max_diff(r["got"], r["want"]) <= 1e-6, where
            assert max_diff(r["got_inside"], r["got"]) == 0.0, where  # inside the user's GatheredParameters
            assert max_diff(r["got_again"], r["got"]) == 0.0, where  # after the task switches
        # lora and ia3 are partitioned (persistence threshold 0); the adapter's parameters stay whole.
        assert not any(per_kind["lora"]["whole_after_training"] + per_kind["ia3"]["whole_after_training"]
                       + per_kind["prompt"]["whole_after_training"])
        assert all(per_kind["adapter"]["whole_after_training"])


def test_save_on_every_rank_writes_one_bundle_that_loads_unsharded(zero3_run):
    out, records = zero3_run
    for kind in records[0]:
        assert sorted(p.name for p in (out / kind).iterdir()) == ["t.safetensors"], kind
        assert {records[r][kind]["path"] for r in (0, 1)} == {str(out / kind / "t.safetensors")}
        loaded = adaptlang.load(build(), out / kind / "t.safetensors")
        values = loaded.full_adapter_state_dict("t")
        assert max_diff(values, records[0][kind]["got"]) == 0.0, kind
        assert max_diff(values, records[0][kind]["want"]) <= 1e-6, kind
    # The PEFT export of the LoRA task holds the same gathered factors.
    peft = load_file(str(out / "peft" / "adapter_model.safetensors"))
    got = records[0]["lora"]["got"]
    def sums(tensors: dict[str, torch.Tensor]) -> list[tuple[tuple[int, ...], float]]:
        return sorted((tuple(v.shape), float(v.double().sum())) for v in tensors.values())

    assert sums(peft) == sums(got)  # PEFT names them its own way: same shapes, same values


def test_zero3_refusals_and_task_switch(zero3_run):
    _, records = zero3_run
    for per_kind in records:
        for kind, r in per_kind.items():
            for what, call in (("merge", "merge()"), ("remove", "remove()"),
                               ("load_values", "load_adapter_state_dict()")):
                assert r[what].startswith("RuntimeApplyError") and f"{call} is not supported on a model sharded " \
                    f"by {ZERO3}" in r[what], (kind, r[what])
            assert r["use_tuned"].startswith("RuntimeApplyError") and f"sharded by {ZERO3}" in r["use_tuned"]
            assert r["active_after_refusal"] == "t"
            assert r["other_trainable"] and all("other_delta" in n for n in r["other_trainable"])
            assert r["other_flags"] and r["t_frozen_while_other"]
            assert r["back"] == r["trainable"]


def test_bundle_callback_through_the_trainer_under_zero3(trainer_run):
    tmp_path, records = trainer_run
    assert all(r["wrapper"] == "DeepSpeedEngine" and r["steps"] == STEPS for r in records)
    assert_bundles_equal_one_process(tmp_path, records)
    loaded = adaptlang.load(build_model(), tmp_path / "adaptlang" / f"{TASK}.safetensors")
    loaded.model.eval()
    with torch.no_grad():
        got = loaded.model(input_ids=probe()).logits
    for record in records:  # the ZeRO-3 model on each rank after the last step
        assert (got - torch.tensor(record["logits"])).abs().max().item() <= 1e-6

