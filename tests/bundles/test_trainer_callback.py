"""``BundleCallback`` in one process: what it writes, when, and which handle it refuses.

The two-rank runs (DDP) are in ``tests/distributed/test_trainer.py``; here
the ``Trainer`` runs in this process, so each case is quick.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, default_data_collator

import adaptlang
from adaptlang.bundles.trainer import BundleCallback, unwrap_model
from adaptlang.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SPEC = """adaptlang 1
model llama
lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    4
}
lora other {
    on      layers[*].mlp.down_proj
    rank    4
}
task a = attn
task b = other
"""


class Rows(torch.utils.data.Dataset):
    """Eight random rows of six tokens; labels are the inputs."""

    def __init__(self) -> None:
        self.ids = torch.randint(1, 64, (8, 6), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.ids[i]}


def trainer_for(model, out, callback, steps: int = 3, save_strategy: str = "steps",
                cls: type[Trainer] = Trainer, before: tuple = ()) -> Trainer:
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=steps, learning_rate=1e-2,
                             optim="sgd", report_to=[], use_cpu=True, save_strategy=save_strategy, save_steps=2,
                             logging_strategy="no", disable_tqdm=True, seed=0)
    return cls(model=model, args=args, train_dataset=Rows(), data_collator=default_data_collator,
               callbacks=[*before, callback])


def assert_bundle_holds(path, adapted, task: str) -> None:
    """The bundle file holds exactly the task's current values."""
    saved = load_file(str(path))
    current = adapted.bundle_tensors(task)
    assert set(saved) == set(current)
    for key, value in current.items():
        assert torch.equal(saved[key], value.detach()), key


def test_writes_at_each_checkpoint_and_at_the_end(bt, tmp_path):
    model = bt.tiny()
    adapted = adaptlang.apply(model, SPEC, task="a")
    callback = BundleCallback(adapted)
    checkpoint_values = {}

    class Snapshot(Trainer):
        """Keeps the values at step 2's checkpoint: the end of training moves them again."""

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            checkpoint_values[self.state.global_step] = {k: v.clone() for k, v in adapted.bundle_tensors("a").items()}

    trainer_for(model, tmp_path, callback, cls=Snapshot).train()
    final = tmp_path / "adaptlang"
    assert callback.saved == [tmp_path / "checkpoint-2" / "adaptlang" / "a.safetensors",
                              tmp_path / "checkpoint-2" / "adaptlang" / "b.safetensors",
                              tmp_path / "checkpoint-3" / "adaptlang" / "a.safetensors",
                              tmp_path / "checkpoint-3" / "adaptlang" / "b.safetensors",
                              final / "a.safetensors", final / "b.safetensors"]
    assert_bundle_holds(final / "a.safetensors", adapted, "a")
    assert_bundle_holds(final / "b.safetensors", adapted, "b")
    at_two = load_file(str(tmp_path / "checkpoint-2" / "adaptlang" / "a.safetensors"))
    assert all(torch.equal(at_two[k], v) for k, v in checkpoint_values[2].items())
    assert any(not torch.equal(at_two[k], v) for k, v in adapted.bundle_tensors("a").items())  # step 3 moved on
    # The final bundle loads onto a fresh model and reproduces the trained one.
    loaded = adaptlang.load(bt.tiny(), final / "a.safetensors")
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_without_a_handle_it_finds_the_models_own_and_saves_only_the_tasks_asked(bt, tmp_path):
    model = bt.tiny()
    adapted = adaptlang.apply(model, SPEC, task="a")
    callback = BundleCallback(tasks=["a"], output_dir=tmp_path / "bundles", dtype=torch.bfloat16)
    trainer_for(model, tmp_path / "trainer", callback, steps=1, save_strategy="no").train()
    assert callback.adapted is adapted
    assert callback.saved == [tmp_path / "bundles" / "adaptlang" / "a.safetensors"]
    assert {v.dtype for v in load_file(str(callback.saved[0])).values()} == {torch.bfloat16}
    assert not (tmp_path / "trainer" / "adaptlang").exists()


def test_refuses_a_handle_of_another_model_before_training(bt, tmp_path):
    trained = bt.tiny()
    adaptlang.apply(trained, SPEC, task="a")
    other = adaptlang.apply(bt.tiny(), SPEC, task="a")
    before = {k: v.clone() for k, v in adaptlang.handle(trained).bundle_tensors("a").items()}
    with pytest.raises(UsageError, match="another model"):
        trainer_for(trained, tmp_path, BundleCallback(other)).train()
    # Refused at on_train_begin: not one step ran, nothing was written.
    assert all(torch.equal(v, before[k]) for k, v in adaptlang.handle(trained).bundle_tensors("a").items())
    assert not list(tmp_path.glob("**/*.safetensors"))


def test_a_task_switch_after_the_optimizer_was_built_is_refused(bt, tmp_path):
    model = bt.tiny()
    adapted = adaptlang.apply(model, SPEC, task="a")
    callback = BundleCallback(adapted)
    trainer = trainer_for(model, tmp_path / "first", callback, steps=1, save_strategy="no")
    trainer.train()
    adapted.use("b")
    b_before = {k: v.clone() for k, v in adapted.bundle_tensors("b").items()}
    # The same Trainer again: its optimizer holds task a's parameters, so b would silently not train.
    with pytest.raises(UsageError, match="switched from task 'a' to 'b'"):
        trainer.train()
    # A new Trainer builds its optimizer for b: b trains, and its bundle says so.
    trainer_for(model, tmp_path / "second", callback, steps=1, save_strategy="no").train()
    saved = load_file(str(tmp_path / "second" / "adaptlang" / "b.safetensors"))
    assert any(not torch.equal(saved[k], v) for k, v in b_before.items())


def test_a_task_switch_during_training_stops_it(bt, tmp_path):
    from transformers import TrainerCallback

    class SwitchAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            adapted.use("b")

    model = bt.tiny()
    adapted = adaptlang.apply(model, SPEC, task="a")
    with pytest.raises(UsageError, match="after this Trainer built its optimizer"):
        trainer_for(model, tmp_path, BundleCallback(adapted), before=(SwitchAfterFirstStep(),)).train()


def test_unwraps_engine_wrappers_and_nothing_else(bt):
    model = bt.tiny()
    assert unwrap_model(torch.nn.DataParallel(model)) is model  # CPU-only: a pass-through wrapper
    holder = torch.nn.Module()
    holder.module = model  # a user's own child named "module" is no wrapper
    assert unwrap_model(holder) is holder


def test_importing_adaptlang_does_not_import_the_trainer_support():
    code = ("import sys, adaptlang, adaptlang.bundles, adaptlang.bundles.adapted;"
            "print('adaptlang.bundles.trainer' in sys.modules, 'transformers.trainer_callback' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]
