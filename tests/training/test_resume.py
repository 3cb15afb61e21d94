"""A run stopped after a checkpoint and resumed ends with exactly the deltas of an uninterrupted run.

Exact, not approximate: the resumed run starts from the checkpoint's bundle (the very float32 values),
the Trainer restores the optimizer, scheduler and RNG states (LoRA dropout and the shuffling draw the
same numbers) and skips the batches already seen in the epoch, so every later step computes the same
operations on the same inputs, on the same CPU, in the same order. Any difference would be a real
resume bug (a lost optimizer state, a reshuffled epoch), not rounding.

A crash is simulated by a callback raising right after checkpoint 8 was written (mid epoch 2 of 12
steps). The same crash also shows that a failed run leaves the previous output bundle untouched.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import TrainerCallback

from adaptlang.bundles.bundle import read_bundle
from adaptlang.errors import UsageError
from adaptlang.training.progress import Reporter
from adaptlang.training.run import TrainConfig, train
from tests.training.support import write_jsonl

SPEC = """adaptlang 1
lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    4
    alpha   8
    dropout 0.2
}
task lm = attn
"""
ROWS = [{"text": t} for t in ("the cat sat on the mat", "the dog ran fast", "a red car on the road",
                              "one two three four", "the sun and the moon", "a big tree")] * 4  # 24 rows


class Recorder(Reporter):
    def __init__(self):
        self.warnings = []

    def warning(self, text):
        self.warnings.append(text)


class Crash(Exception):
    """The simulated failure."""


class CrashAfter(TrainerCallback):
    """Raises once checkpoint ``step`` is on disk (``on_save`` runs after the Trainer wrote it)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"crash after checkpoint {self.step}")


@pytest.fixture()
def setup(tmp_path, llama_folder):
    spec = tmp_path / "lm.adapt"
    spec.write_text(SPEC, encoding="utf-8")
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    held = write_jsonl(tmp_path / "eval.jsonl", ROWS[:6])
    args = tmp_path / "args.yaml"
    args.write_text("save_strategy: steps\nsave_steps: 2\nsave_total_limit: null\n", encoding="utf-8")

    def config(out, **changes):
        options = dict(spec=spec, model=str(llama_folder), data=data, eval_data=held, task="lm", out=out,
                       epochs=2, batch_size=4, lr=2e-2, trainer_args=args)
        return TrainConfig(**{**options, **changes})

    return config


def tensors(path):
    return read_bundle(path).tensors


def test_resume_gives_exactly_the_uninterrupted_deltas(tmp_path, setup):
    whole = train(setup(tmp_path / "whole"))
    assert whole.record["steps"] == 12
    with pytest.raises(Crash):
        train(setup(tmp_path / "stopped", callbacks=[CrashAfter(8)]))
    assert not (tmp_path / "stopped" / "lm.safetensors").exists()
    checkpoints = tmp_path / "stopped" / "checkpoints"
    assert (checkpoints / "checkpoint-8").is_dir()
    # A run killed while saving checkpoint 10 leaves it without trainer_state.json: resume skips it.
    shutil.copytree(checkpoints / "checkpoint-8" / "adaptlang", checkpoints / "checkpoint-10" / "adaptlang")
    reporter = Recorder()
    resumed = train(setup(tmp_path / "stopped", resume=True), reporter)
    assert reporter.warnings == [f"skipping {checkpoints / 'checkpoint-10'}: incomplete (the run stopped while "
                                 "saving it)"]
    assert resumed.record["resumed_from"] == 8 and resumed.record["steps"] == 12
    assert resumed.record["metrics"]["before"] == whole.record["metrics"]["before"]  # kept from the first part
    expected, got = tensors(whole.bundle), tensors(resumed.bundle)
    assert expected.keys() == got.keys()
    moved = tensors(tmp_path / "whole" / "checkpoints" / "checkpoint-2" / "adaptlang" / "lm.safetensors")
    assert any(not torch.equal(moved[k], expected[k]) for k in expected)  # steps 2..12 changed the values
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert resumed.record["metrics"]["after"] == whole.record["metrics"]["after"]


def test_a_failed_run_leaves_the_previous_bundle(tmp_path, setup):
    first = train(setup(tmp_path / "out", epochs=1))
    before = first.bundle.read_bytes()
    with pytest.raises(Crash):
        train(setup(tmp_path / "out", overwrite=True, callbacks=[CrashAfter(4)]))
    assert first.bundle.read_bytes() == before


def test_checkpoints_in_the_way_and_resuming_another_run_are_refused(tmp_path, setup):
    with pytest.raises(UsageError, match="--resume: no complete checkpoint in"):
        train(setup(tmp_path / "out", resume=True))
    with pytest.raises(Crash):
        train(setup(tmp_path / "out", callbacks=[CrashAfter(2)]))
    with pytest.raises(UsageError, match="holds an earlier run's checkpoints") as err:
        train(setup(tmp_path / "out"))
    assert "--resume" in err.value.diagnostics[0].hint and "--overwrite" in err.value.diagnostics[0].hint
    # --overwrite deletes them only once every check passed: a refused run leaves them.
    with pytest.raises(UsageError, match="--lr must be more than 0"):
        train(setup(tmp_path / "out", overwrite=True, lr=-1.0))
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    with pytest.raises(UsageError, match=r"this run differs from the one in .* \(learning_rate\)") as err:
        train(setup(tmp_path / "out", resume=True, lr=1e-2))
    assert err.value.diagnostics[0].notes == ("learning_rate: was 0.02, now 0.01",)
