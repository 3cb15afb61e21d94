"""One rank of a ``Trainer`` run on an adapted tiny Llama, and what the test replays it with.

``test_trainer.py`` runs this file under ``torch.distributed.run`` with two
ranks (CPU, gloo) and checks what it leaves against one process training
on the concatenated batches, with the spec, model, data and arguments
defined here. The run must be reproducible by one process: SGD (no
momentum, no weight decay), a constant learning rate without warm-up, no
gradient clipping, no dropout, a sequential sampler, and equal-length rows
without padding (so a rank's mean loss over its tokens, averaged over
ranks, is the mean over the concatenated batch).

Each rank writes ``rank<N>.json`` into the output folder: the ``input_ids``
of every step it trained on (the reference replays exactly these, whatever
the sampler did), what it checked about the optimizer and the gradients,
and the trained model's logits on :func:`probe` (which the saved bundle,
loaded onto a fresh model, must reproduce).

Usage: ``python -m torch.distributed.run --nproc-per-node 2 trainer_ranks.py ENGINE OUT``
with ENGINE ``ddp``, ``fsdp1`` or ``fsdp2`` (``zero3``: through ``zero3_ranks.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

if __name__ == "__main__":  # run as a script by the launcher: the repository root holds adaptlang
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import adaptlang  # noqa: E402

SPEC = """adaptlang 1
model llama

lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    4
    alpha   8
}

adapter bottleneck {
    after   layers[*].mlp
    size    8
}

lora other {
    on      layers[*].mlp.down_proj
    rank    4
}

task a = attn + bottleneck
task b = other
"""
TASK = "a"          # trained; task b's delta stays frozen (requires_grad False) on every rank
STEPS = 3
SAVE_STEPS = 2      # a checkpoint at step 2, the final bundles at step 3
PER_RANK = 2        # rows per rank and step
LR = 0.5            # large, so that three steps move every factor well past rounding
ROWS, LENGTH, VOCAB = 16, 6, 64
STD = 0.3           # the base weights' standard deviation (see build_model)


def build_model() -> torch.nn.Module:
    """The tiny Llama preset with seeded random weights (identical on every rank)."""
    from adaptlang.plan.models import load_model

    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", device="cpu")
    # Larger weights than HF's 0.02 initialisation: attention then is far from uniform, so every
    # factor (the queries' LoRA too) gets gradients well above rounding within three steps.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, STD, generator=generator)
    return model


class Rows(torch.utils.data.Dataset):
    """Random token rows; labels are the inputs (causal LM), no padding."""

    def __init__(self) -> None:
        self.ids = torch.randint(1, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.ids[i]}


def dataset() -> Rows:
    """The training rows (the same on every rank; the sampler splits them)."""
    return Rows()


def probe() -> torch.Tensor:
    """Input ids, not among the training rows, whose logits compare trained and loaded models."""
    return torch.randint(1, VOCAB, (3, 7), generator=torch.Generator().manual_seed(5))


def training_args(out: Path, engine: str) -> Any:
    """``TrainingArguments`` for ``engine`` (``ddp``, ``fsdp1``, ``fsdp2``, ``zero3``) on CPU with gloo."""
    from transformers import TrainingArguments

    extra: dict[str, Any] = {}
    if engine == "ddp":
        # False: DDP then fails loudly if a parameter that requires grad gets none (another task's delta).
        extra["ddp_find_unused_parameters"] = False
    elif engine in ("fsdp1", "fsdp2"):
        config = {"version": 1 if engine == "fsdp1" else 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                  "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": "FULL_STATE_DICT"}
        if engine == "fsdp1":
            config["use_orig_params"] = True
        extra.update(fsdp=True, fsdp_config=config)
    elif engine == "zero3":  # tests/distributed/zero3_ranks.py runs this one (DS_ACCELERATOR=cpu)
        extra["deepspeed"] = {
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "zero_allow_untested_optimizer": True}
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=PER_RANK, max_steps=STEPS, learning_rate=LR,
        optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        train_sampling_strategy="sequential", seed=0, use_cpu=True, ddp_backend="gloo",
        save_strategy="steps", save_steps=SAVE_STEPS, logging_strategy="no", report_to=[], disable_tqdm=True,
        **extra)


def main(engine: str, out: Path) -> None:
    from transformers import Trainer, default_data_collator

    from adaptlang.bundles.trainer import BundleCallback

    rank = int(os.environ["RANK"])
    model = build_model()
    adapted = adaptlang.apply(model, SPEC, task=TASK)
    seen: list[list[list[int]]] = []

    class RecordingTrainer(Trainer):
        """Records each step's batch: the reference replays the batches the ranks really got."""

        def training_step(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].tolist())
            return super().training_step(model, inputs, *args, **kwargs)

    trainer = RecordingTrainer(model=model, args=training_args(out, engine), train_dataset=dataset(),
                               data_collator=default_data_collator, callbacks=[BundleCallback(adapted)])
    trainer.train()
    # Read after training: an engine may have replaced the parameter objects (FSDP2's DTensors).
    trainable = {id(p) for _, p in adapted.trainable_parameters()}
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
