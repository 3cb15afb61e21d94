"""Training an adapted model with the Hugging Face ``Trainer`` and with gradient checkpointing.

The ``Trainer`` builds its optimizer from the parameters with
``requires_grad`` and saves checkpoints through ``save_pretrained``; both
must see the adapted model as a normal one: exactly the task's trainable
parameters in the optimizer, checkpoints that save and resume. Gradient
checkpointing recomputes each decoder layer in the backward, through the
site wrappers; its gradients must equal the plain run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

import adaptlang
from adaptlang.plan.models import load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # HF's renamed checkpointing API

SPECS = Path(__file__).resolve().parents[2] / "specs"


class TinyLM(torch.utils.data.Dataset):
    """Eight random sequences of six tokens; labels are the inputs (causal LM)."""

    def __init__(self, seed: int = 0):
        self.ids = torch.randint(1, 64, (8, 6), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.ids[i]}


@pytest.fixture
def adapt(rt, tmp_path):
    """Factory: a fresh seeded tiny Llama and the Adapted of a spec and task on it."""
    tokenizer = rt.word_tokenizer(tmp_path)

    def build(spec: str, task: str | None = None, seed: int = 0):
        torch.manual_seed(seed)
        model, _ = load_model("tiny-llama", device="cpu")
        return model, adaptlang.apply(model, SPECS / spec, task=task, tokenizer=tokenizer)

    return build


def make_trainer(model, out_dir: Path, steps: int = 4, **overrides) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=steps, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="steps", save_steps=2, logging_strategy="no",
        disable_tqdm=True, seed=0, **overrides)
    return Trainer(model=model, args=args, train_dataset=TinyLM(), data_collator=default_data_collator)


def every_tensor(model, adapted) -> dict[int, tuple[str, torch.Tensor]]:
    """Parameters, buffers and every delta's parameters, by identity (tune copies may be out of their slots)."""
    found = {id(p): (n, p) for n, p in model.named_parameters()}
    found.update({id(b): (n, b) for n, b in model.named_buffers()})
    for delta in adapted.plan.to_dict()["deltas"]:
        found.update({id(p): (f"{delta}/{k}", p) for k, p in adapted.delta_parameters(delta).items()})
    return found


@pytest.mark.parametrize("spec,task,checkpointing", [
    ("lora.adapt", None, False),
    ("multitask.adapt", "qa_v2", False),   # a prompt, a tuned lm_head copy, frozen LoRAs
    ("multitask.adapt", "both", True),     # weighted LoRAs and an adapter, with gradient checkpointing
])
def test_trainer_trains_only_the_task_and_saves_checkpoints(spec, task, checkpointing, adapt, tmp_path):
    model, adapted = adapt(spec, task)
    trainable = {id(p): name for name, p in adapted.trainable_parameters()}
    tensors = every_tensor(model, adapted)
    snapshot = {key: t.detach().clone() for key, (_, t) in tensors.items()}
    trainer = make_trainer(model, tmp_path / "out", gradient_checkpointing=checkpointing)
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    # The Trainer's optimizer holds exactly the task's trainable parameters.
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == set(trainable)
    changed = {key for key, value in snapshot.items() if not torch.equal(tensors[key][1], value)}
    assert changed and changed <= set(trainable), sorted(tensors[k][0] for k in changed - set(trainable))
    # Checkpoints were written through save_pretrained, with the delta parameters in them.
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    for name, _ in adapted.trainable_parameters():
        key = name.replace(".base.", ".")  # the state dict keeps the base's original keys
        assert torch.equal(saved[key], state[key]), key


def test_training_resumes_from_a_checkpoint_exactly(adapt, tmp_path):
    # QLoRA with dropout: the resumed run must restore the LoRA values, the optimizer and the RNG.
    _, straight = adapt("qlora.adapt")
    make_trainer(straight.model, tmp_path / "a").train()
    _, resumed = adapt("qlora.adapt")
    trainer = make_trainer(resumed.model, tmp_path / "b")
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    ours = resumed.delta_parameters("all_linear")
    for key, value in straight.delta_parameters("all_linear").items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-6, msg=key)


def zero_started(adapted) -> set[str]:
    """Names of the trainable factors that start at zero (LoRA ``lora_B``, adapter ``up.weight``, by local name)."""
    ids = {id(p) for delta in adapted.plan.to_dict()["deltas"]
           for key, p in adapted.delta_parameters(delta).items()
           if key.rsplit("/", 1)[1] in ("lora_B", "up.weight")}
    return {name for name, p in adapted.trainable_parameters() if id(p) in ids}


def gradients(model, adapted, batch: dict, checkpointing: bool, reentrant: bool = False) -> dict[str, torch.Tensor]:
    """One forward/backward in train mode (dropout on, seeded); the trainable parameters' gradients."""
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        assert model.model.layers[0].gradient_checkpointing
    model.train()
    torch.manual_seed(123)
    model(**batch).loss.backward()
    return {name: p.grad for name, p in adapted.trainable_parameters()}


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("task", ["both", "qa_v2"])
def test_gradient_checkpointing_gives_the_same_gradients(task, reentrant, adapt, rt):
    batch = rt.lm_batch()
    plain = gradients(*adapt("multitask.adapt", task), batch, checkpointing=False)
    model, adapted = adapt("multitask.adapt", task)
    checkpointed = gradients(model, adapted, batch, checkpointing=True, reentrant=reentrant)
    assert set(checkpointed) == set(plain)
    for name, grad in plain.items():
        assert grad is not None and checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # The factors that start at zero (LoRA B, adapter up) got a nonzero gradient through the recomputation.
    started_at_zero = zero_started(adapted)
    assert len(started_at_zero) == (0 if task == "qa_v2" else 4 + 6 + 2)  # attn, mlp, bottleneck sites
    assert all(checkpointed[n].abs().sum() > 0 for n in started_at_zero)


@pytest.mark.parametrize("spec,task", [
    ("lora.adapt", None),        # plain LoRA on nn.Linear: the fused path when not autocast
    ("qlora.adapt", None),       # a quantized base computing in fp32, LoRA added to its output
    ("multitask.adapt", "qa_v2"),
    ("dora.adapt", None),
])
def test_trainer_with_bf16_autocast(spec, task, adapt, tmp_path):
    # bf16=True on CPU runs the forward under torch.autocast: base matmuls in bf16, deltas kept in fp32.
    model, adapted = adapt(spec, task)
    trainable = {id(p) for _, p in adapted.trainable_parameters()}
    tensors = every_tensor(model, adapted)
    snapshot = {key: t.detach().clone() for key, (_, t) in tensors.items()}
    result = make_trainer(model, tmp_path / "out", bf16=True).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert all(p.dtype == torch.float32 for _, p in adapted.trainable_parameters())
    changed = {key for key, value in snapshot.items() if not torch.equal(tensors[key][1], value)}
    assert changed and changed <= trainable
