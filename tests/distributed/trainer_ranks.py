"""One rank of a ``Trainer`` run on an adapted tiny Llama; run by ``torch.distributed.run``.

``test_trainer.py`` launches it with two ranks (CPU, gloo) and checks what it
leaves against one process training on the concatenated batches. Each rank
writes ``rank<N>.json`` into the output folder: the ``input_ids`` of every
step it trained on (the reference replays exactly these, whatever the
sampler did), what it checked about the optimizer and the gradients, and
the trained model's logits on :func:`probe` (which the saved bundle, loaded
onto a fresh model, must reproduce).

Usage: ``python -m torch.distributed.run --nproc-per-node 2 trainer_ranks.py ENGINE OUT``
with ENGINE ``ddp``, ``fsdp1`` or ``fsdp2``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

# The launcher runs this file as a script; the repository root holds adaptlang and tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import adaptlang  # noqa: E402
from adaptlang.bundles.trainer import BundleCallback  # noqa: E402
from tests.distributed.trainer_setup import (  # noqa: E402
    SPEC, STEPS, TASK, build_model, dataset, probe, training_args)


def main(engine: str, out: Path) -> None:
    from transformers import Trainer, default_data_collator

    rank = int(os.environ["RANK"])
    model = build_model()
    adapted = adaptlang.apply(model, SPEC, task=TASK)
    trainable = {id(p) for _, p in adapted.trainable_parameters()}
    seen: list[list[list[int]]] = []

    class RecordingTrainer(Trainer):
        """Records each step's batch: the reference replays the batches the ranks really got."""

        def training_step(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].tolist())
            return super().training_step(model, inputs, *args, **kwargs)

    trainer = RecordingTrainer(model=model, args=training_args(out, engine), train_dataset=dataset(),
                               data_collator=default_data_collator, callbacks=[BundleCallback(adapted)])
    trainer.train()
    model.eval()
    with torch.no_grad():  # every rank: under FSDP the forward is collective
        logits = model(input_ids=probe()).logits
    in_optimizer = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    record = {
        "rank": rank,
        "batches": seen,
        "wrapper": type(trainer.model_wrapped).__name__,
        "optimizer_numel": sum(p.numel() for p in in_optimizer),
        "optimizer_is_trainable": {id(p) for p in in_optimizer} == trainable,
        "frozen_with_grad": [n for n, p in model.named_parameters() if id(p) not in trainable and p.grad is not None],
        "steps": trainer.state.global_step,
        "logits": logits.tolist(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    assert record["steps"] == STEPS


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
