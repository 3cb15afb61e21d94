"""One rank of a DeepSpeed ZeRO-3 run (CPU, gloo) on tiny Llamas: per delta kind, then the ``Trainer``.

``test_zero3.py`` runs this file under ``torch.distributed.run`` with two
ranks and ``DS_ACCELERATOR=cpu``. Per kind (:data:`TRAINED`), every rank:

* trains the unsharded reference in one process on the whole batch
  (:func:`tests.distributed.sharding.sgd`), then the same model under a
  ZeRO-3 engine (the client's torch SGD) on its own half;
* gathers the trained values (``full_adapter_state_dict``, collective),
  also inside its own ``GatheredParameters``, and saves the bundle
  (``save``, collective; rank 0 writes) into ``OUT/kinds/<kind>``;
* tries what must refuse on a ZeRO-3 model (merge, remove, loading values,
  a tune-slot swap) and switches to a task without tune deltas and back.

It writes ``OUT/kinds/rank<N>.pt``: per kind the reference's initial and
trained values, the gathered ones, and what it saw. Then, in the same
processes, ``trainer_ranks.py``'s ``Trainer`` run with ``BundleCallback``
under ZeRO-3 writes into ``OUT/trainer`` (its ``rank<N>.json``, checkpoints
and bundles).

Usage: ``python -m torch.distributed.run --nproc-per-node 2 zero3_ranks.py OUT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

if __name__ == "__main__":  # run as a script by the launcher: the repository root holds adaptlang
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.distributed.sharding import KINDS, batch, build, my_rows, sgd  # noqa: E402

LR = 1.0
STEPS = 3
#: The ZeRO-3 configuration: fp32, no offload, the client's torch SGD (hence "zero_allow_untested_optimizer").
#: Persistence threshold 0: every parameter is partitioned, however small (by default parameters under 1e5
#: values stay whole on every rank after the first forward, and a LoRA factor would never be gathered).
CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 0.0,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 1_000_000,
}
#: The kinds trained here (specs from tests.distributed.sharding), each with the ZeRO-3 configuration it runs
#: under: the adapter keeps DeepSpeed's default persistence threshold, so its small parameters stay whole on
#: every rank after the first forward (gathering then copies them as they are). Each spec also gets the
#: extra tasks below.
TRAINED = {"lora": CONFIG, "ia3": CONFIG, "prompt": CONFIG,  # the prompt: gathered around its module call
           "adapter": {**CONFIG, "zero_optimization": {"stage": 3}}}
#: Task ``other``: a LoRA on other modules (switching to it needs no slot swap); ``tuned``: a tune delta,
#: whose copy is not in the slot while ``t`` is active (switching to it would swap a slot).
EXTRA = ("lora other_delta {\n on layers[*].mlp.down_proj\n rank 2\n}\n"
         "tune head {\n params lm_head.weight\n}\n"
         "task other = other_delta\ntask tuned = head\n")


def spec_for(kind: str) -> str:
    return "adaptlang 1\n" + KINDS[kind] + "task t = a\n" + EXTRA


def refusal(call: Any) -> str:
    """The first line of the error ``call()`` raises, or ``"no error"``."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test checks the message
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return "no error"


def train_kind(kind: str, config: dict[str, Any], out: Path) -> dict[str, Any]:
    import deepspeed

    import adaptlang

    ids = batch()
    spec = spec_for(kind)
    ref = build()
    ref_handle = adaptlang.apply(ref, spec, task="t")
    start = ref_handle.full_adapter_state_dict()
    sgd(ref, ref_handle, ids, steps=STEPS, lr=LR)
    want = ref_handle.full_adapter_state_dict()

    model = build()
    adapted = adaptlang.apply(model, spec, task="t")
    names_before = [n for n, _ in adapted.trainable_parameters()]
    optimizer = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=LR)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    live = adapted.trainable_parameters()
    record: dict[str, Any] = {
        "engine": adapted.sharded(),
        "trainable": [n for n, _ in live], "trainable_before": names_before,
        "all_zero3": all(hasattr(p, "ds_id") for _, p in live),
        # Outside a forward a ZeRO-3 parameter holds no values: gathering is what gives them.
        "placeholder_numel": sum(p.numel() for _, p in live),
        "full_shapes": [tuple(p.ds_shape) for _, p in live],
    }
    mine = my_rows(ids)
    for _ in range(STEPS):
        loss = engine(input_ids=mine, labels=mine).loss
        engine.backward(loss)
        engine.step()
    record["whole_after_training"] = [p.ds_status.name == "AVAILABLE" for _, p in live]
    record["got"] = adapted.full_adapter_state_dict()  # collective
    # Inside the user's own gathering context: the values are read as they are there.
    with deepspeed.zero.GatheredParameters([p for _, p in live]):
        record["got_inside"] = adapted.full_adapter_state_dict()
    (record["path"],) = [str(p) for p in adapted.save(out / kind, tasks=["t"])]  # collective; rank 0 writes
    if kind == "lora":  # export_peft gathers the same way (collective; rank 0 writes)
        record["peft"] = str(adapted.export_peft(out / "peft", task="t"))
    record["start"], record["want"] = start, want
    record["merge"] = refusal(adapted.merge)
    record["remove"] = refusal(adapted.remove)
    record["load_values"] = refusal(lambda: adapted.load_adapter_state_dict(want))
    record["use_tuned"] = refusal(lambda: adapted.use("tuned"))
    record["active_after_refusal"] = adapted.active_task
    adapted.use("other")
    other = adapted.trainable_parameters()
    record["other_trainable"] = [n for n, _ in other]
    record["other_flags"] = all(p.requires_grad and hasattr(p, "ds_id") for _, p in other)
    record["t_frozen_while_other"] = not any(p.requires_grad for n, p in model.named_parameters()
                                             if n in set(record["trainable"]))
    adapted.use("t")
    record["back"] = [n for n, p in adapted.trainable_parameters() if p.requires_grad]
    # Saved again, after the switches: the same values (nothing trained meanwhile).
    record["got_again"] = adapted.full_adapter_state_dict("t")
    return record


def skip_shm_build() -> None:
    """Keeps DeepSpeed from compiling its CPU shared-memory all-reduce when the process group starts.

    That op serves only ``inference_all_reduce`` (tensor-parallel inference),
    never ZeRO-3; building it compiles C++ on first use (about a minute on two
    cores, then cached in ``~/.cache/torch_extensions``).
    """
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(out: Path) -> None:
    import deepspeed

    skip_shm_build()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    rank = torch.distributed.get_rank()
    records = {kind: train_kind(kind, config, out / "kinds") for kind, config in TRAINED.items()}
    torch.save(records, out / "kinds" / f"rank{rank}.pt")
    # The Trainer with BundleCallback, in the same processes (one start-up less): its own records and files.
    from tests.distributed import trainer_ranks

    (out / "trainer").mkdir(exist_ok=True)
    trainer_ranks.main("zero3", out / "trainer")


if __name__ == "__main__":
    assert os.environ.get("DS_ACCELERATOR") == "cpu", "run with DS_ACCELERATOR=cpu"
    main(Path(sys.argv[1]))
