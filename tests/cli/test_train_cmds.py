"""``adaptc train``: a real run's output, and every bad input's message and exit code (no tracebacks).

Exit codes: 2 for usage errors (a missing file, an unsupported suffix, a task the spec lacks, a bad
--trainer-args file), 1 for data and spec/bind errors (an empty file, a missing field, mixed labels, a
row too long, selectors that match nothing in the model, a new head the task does not train).
"""

from __future__ import annotations

import pytest
import torch

from tests.training.support import (
    LLAMA_SPEC, SENTIMENT_SPEC, minilm, sentiment_rows, tiny_llama_folder, write_jsonl,
)

from .conftest import TRACEBACK, invoke


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_llama_folder(tmp_path_factory.mktemp("models") / "tiny_llama")


@pytest.fixture()
def files(tmp_path):
    spec = tmp_path / "lm.adapt"
    spec.write_text(LLAMA_SPEC, encoding="utf-8")
    return spec, write_jsonl(tmp_path / "train.jsonl", [{"text": "the cat sat"}, {"text": "a dog ran"}] * 4)


def train(runner, *args):
    result = invoke(runner, "train", *args)
    assert TRACEBACK not in result.stderr and TRACEBACK not in result.stdout
    return result


def test_the_demo_command_prints_accuracy_before_and_after(runner, tmp_path):
    torch.set_num_threads(1)
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, seed=1))
    held = write_jsonl(tmp_path / "test.jsonl", sentiment_rows(16, seed=1, offset=32))
    result = train(runner, SENTIMENT_SPEC, "--model", minilm(), "--data", data, "--eval", held,
                   "--task", "sentiment", "--out", tmp_path / "out", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("eval accuracy: ") and " -> " in line for line in lines), result.stdout
    assert lines[-1] == f"wrote {tmp_path / 'out' / 'sentiment.safetensors'}"
    assert "task sentiment: 74,498 trainable parameters" in result.stderr
    assert "before training: accuracy" in result.stderr
    assert "epoch 1  step 1  loss " in result.stderr  # 32 rows in batches of 32 (the default): one step
    shown = invoke(runner, "show", tmp_path / "out" / "sentiment.safetensors")
    assert shown.exit_code == 0
    assert "  objective     classification" in shown.stdout
    assert "  labels        0=negative, 1=positive" in shown.stdout
    assert "  eval accuracy " in shown.stdout


def test_a_causal_lm_run_and_its_only_task_by_default(runner, tmp_path, files, llama):
    spec, data = files
    result = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "out", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {tmp_path / 'out' / 'lm.safetensors'}"
    assert "epoch 1  step 1  loss " in result.stderr


def test_missing_and_unsupported_data_files_exit_2(runner, tmp_path, files, llama):
    spec, _ = files
    missing = train(runner, spec, "--model", llama, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o")
    assert missing.exit_code == 2
    assert f"{tmp_path / 'nope.jsonl'}: error: no such data file: {tmp_path / 'nope.jsonl'}" in missing.stderr
    (tmp_path / "d.xlsx").write_text("x", encoding="utf-8")
    other = train(runner, spec, "--model", llama, "--data", tmp_path / "d.xlsx", "--out", tmp_path / "o")
    assert other.exit_code == 2 and "error: unsupported data file type '.xlsx'" in other.stderr


def test_an_empty_file_exits_1(runner, tmp_path, files, llama):
    spec, _ = files
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    result = train(runner, spec, "--model", llama, "--data", tmp_path / "empty.jsonl", "--out", tmp_path / "o")
    assert result.exit_code == 1 and f"error: {tmp_path / 'empty.jsonl'} is empty" in result.stderr


def test_a_missing_field_names_it_the_file_and_the_fields(runner, tmp_path, files, llama):
    spec, _ = files
    data = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "the cat", "label": 1}])
    result = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert f"error: {data} has no field 'text' (the text field)" in result.stderr
    assert "note: fields: sentence, label" in result.stderr


def test_mixed_labels_name_the_row(runner, tmp_path, files, llama):
    spec, _ = files
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "pos"}])
    result = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert f"row 2 of {data}: label 'pos' is text, but row 1 of {data} has integer label 0" in result.stderr


def test_a_task_not_in_the_spec_lists_the_tasks(runner, tmp_path, files, llama):
    spec, data = files
    result = train(runner, spec, "--model", llama, "--data", data, "--task", "lmm", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert f"error: spec {spec} has no task 'lmm'" in result.stderr
    assert "help: did you mean 'lm'?" in result.stderr and "note: tasks: lm" in result.stderr


def test_a_spec_that_does_not_fit_the_model_gets_the_compilers_error(runner, tmp_path, files, llama):
    _, data = files
    result = train(runner, SENTIMENT_SPEC, "--model", llama, "--data", data, "--task", "sentiment",
                   "--out", tmp_path / "o")
    assert result.exit_code == 1
    # Line 11 of specs/sentiment.adapt: `on encoder.layer[*].attention.self.{query, value}`, a BERT path.
    assert ("sentiment.adapt:11:13: error: 'encoder.layer[*].attention.self.{query, value}' matches nothing"
            in result.stderr)


def test_a_new_head_the_task_does_not_train_is_refused(runner, tmp_path):
    spec = tmp_path / "qv.adapt"
    spec.write_text("adaptlang 1\nlora qv {\n    on encoder.layer[*].attention.self.{query, value}\n    rank 4\n}\n"
                    "task sentiment = qv\n", encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(8))
    result = train(runner, spec, "--model", minilm(), "--data", data, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert ("error: task 'sentiment' does not train the new parameters of model: classifier.bias, "
            "classifier.weight") in result.stderr
    assert "tune head { params classifier }" in result.stderr
    assert not (tmp_path / "o" / "sentiment.safetensors").exists()


def test_text_longer_than_the_model_names_the_row_and_lengths(runner, tmp_path, files, llama):
    spec, _ = files
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat"}, {"text": " ".join(["the cat sat"] * 30)}])
    result = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "o")
    assert result.exit_code == 1
    # 90 words + </s>; the tiny Llama has 64 positions.
    assert f"error: row 2 of {data} is 91 tokens long; the model takes at most 64" in result.stderr
    assert "help: pass --max-length 64 (or less)" in result.stderr
    ok = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "o", "--max-length", "32",
               "--epochs", "1")
    assert ok.exit_code == 0, ok.stderr
    assert "warning: train: truncated 1 rows to --max-length" in ok.stderr


def test_a_bad_trainer_args_file_exits_2(runner, tmp_path, files, llama):
    spec, data = files
    args = tmp_path / "args.yaml"
    args.write_text("num_train_epoch: 2\n", encoding="utf-8")
    result = train(runner, spec, "--model", llama, "--data", data, "--out", tmp_path / "o", "--trainer-args", args)
    assert result.exit_code == 2
    assert f"error: {args}: unknown TrainingArguments field 'num_train_epoch'" in result.stderr
    assert "help: did you mean 'num_train_epochs'?" in result.stderr


def test_ctrl_c_names_the_last_checkpoint_and_exits_130(runner, tmp_path, files, monkeypatch):
    import adaptlang.training.run as run

    def interrupted(config, reporter):
        reporter.started(10, 0, 1.0)
        reporter.checkpoint(f"{config.out}/checkpoints/checkpoint-5")
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train", interrupted)
    spec, data = files
    result = train(runner, spec, "--model", "tiny-llama", "--data", data, "--out", tmp_path / "o")
    assert result.exit_code == 130
    assert (f"interrupted: the last checkpoint is {tmp_path / 'o'}/checkpoints/checkpoint-5; continue with --resume"
            in result.stderr)


def test_out_naming_a_file_exits_2_before_the_model_loads(runner, tmp_path, files, llama):
    spec, data = files
    taken = tmp_path / "taken"
    taken.write_text("not a folder", encoding="utf-8")
    result = train(runner, spec, "--model", llama, "--data", data, "--out", taken)
    assert result.exit_code == 2, result.stderr  # was 3: NotADirectoryError creating taken/checkpoints
    assert f"--out {taken} is a file, not a folder" in result.stderr
    assert taken.read_text(encoding="utf-8") == "not a folder"


def test_evaluating_on_the_training_data_is_flagged(runner, tmp_path, files, llama):
    # Same bytes under another name: the "eval" numbers would measure fit, not held-out performance.
    spec, data = files
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    result = train(runner, spec, "--model", llama, "--data", data, "--eval", copy, "--out", tmp_path / "o",
                   "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert f"warning: the evaluation data {copy} holds the same bytes as the training data" in \
        " ".join(result.stderr.split())
