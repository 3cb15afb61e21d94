"""``adaptc predict``: JSON Lines on stdout or written atomically to --out, and bad inputs' messages and exit codes.

Exit codes: 1 for bundle and data errors (a missing or foreign bundle, a missing field, an unknown
task in a row, an empty file), 2 for usage errors (several tasks and no --task-field, a missing
option, an --out folder that does not exist). The bundles are two LoRA tasks trained by
``adaptc train``'s function on a tiny Llama folder (module scope, a few seconds).
"""

from __future__ import annotations

import json

import pytest
import torch

from adaptlang.training.predict import PredictConfig, predict, to_jsonl
from tests.training.predict_support import train_lms
from tests.training.support import minilm, tiny_llama_folder, write_jsonl

from .conftest import TRACEBACK, invoke

ROWS = [{"id": 7, "prompt": "question one two", "task": "lm"}, {"id": 8, "prompt": "question four five", "task": "echo"},
        {"id": 9, "prompt": "the cat", "task": "lm"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tiny_llama_folder(tmp_path_factory.mktemp("models") / "tiny_llama")
    return folder, train_lms(tmp_path_factory.mktemp("lms"), folder)


def run(runner, trained, data, *args):
    folder, bundles = trained
    result = invoke(runner, "predict", bundles["lm"], bundles["echo"], "--model", folder, "--data", data, *args)
    assert TRACEBACK not in result.stderr and TRACEBACK not in result.stdout
    return result


def test_stdout_carries_exactly_the_json_lines(runner, tmp_path, trained):
    torch.set_num_threads(1)
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    result = run(runner, trained, data, "--task-field", "task", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr
    folder, bundles = trained
    expected = to_jsonl(predict(PredictConfig(model=str(folder), bundles=[bundles["lm"], bundles["echo"]], data=data,
                                              task_field="task", max_new_tokens=3)).rows)
    assert result.stdout == expected
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["row"], r["id"], r["task"]) for r in lines] == [(1, 7, "lm"), (2, 8, "echo"), (3, 9, "lm")]
    assert lines[0]["text"] == "answer three"  # as trained; the end-of-sequence token is not shown
    assert result.stderr == ""


def test_out_is_written_whole_and_a_failed_run_keeps_the_old_file(runner, tmp_path, trained):
    torch.set_num_threads(1)
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "predictions.jsonl"
    done = run(runner, trained, data, "--task-field", "task", "--max-new-tokens", "3", "--out", out)
    assert done.exit_code == 0, done.stderr
    assert done.stdout == f"wrote 3 predictions to {out}\n"
    first = out.read_bytes()
    assert first == run(runner, trained, data, "--task-field", "task", "--max-new-tokens", "3").stdout.encode()
    bad = write_jsonl(tmp_path / "bad.jsonl", ROWS + [{"id": 10, "prompt": "one", "task": "translate"}])
    failed = run(runner, trained, bad, "--task-field", "task", "--out", out)
    assert failed.exit_code == 1
    assert "row 4 of" in failed.stderr and "task 'translate'" in failed.stderr
    assert out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "predictions.jsonl", "rows.jsonl"]  # no temp


@pytest.mark.parametrize("case, code, message", [
    ("missing bundle", 1, "no such file"),
    ("foreign bundle", 1, "made for a different model"),
    ("no task field", 2, "2 tasks are loaded (lm, echo)"),
    ("missing field", 1, "has no field 'prompt' (the prompt field of task 'lm')"),
    ("empty data", 1, "is empty"),
    ("unknown task", 2, "--task translate is not a task of the bundles given"),
    ("no out folder", 2, "no such folder"),
    ("no data option", 2, "Missing option '--data'"),
])
def test_bad_input(runner, tmp_path, trained, case, code, message):
    folder, bundles = trained
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    args = [bundles["lm"], bundles["echo"], "--model", folder, "--data", data]
    if case == "missing bundle":
        args[0] = tmp_path / "nothing.safetensors"
    elif case == "foreign bundle":  # a Llama's bundle on a BERT
        args = [bundles["lm"], "--model", minilm(), "--data", data]
    elif case == "missing field":
        args[-1] = write_jsonl(tmp_path / "other.jsonl", [{"question": "one", "task": "lm"}])
        args += ["--task-field", "task"]
    elif case == "empty data":
        args[-1] = tmp_path / "empty.jsonl"
        args[-1].write_text("", encoding="utf-8")
        args += ["--task-field", "task"]
    elif case == "unknown task":
        args += ["--task", "translate"]
    elif case == "no out folder":
        args += ["--task-field", "task", "--out", tmp_path / "missing" / "p.jsonl"]
    elif case == "no data option":
        args = args[:4]
    result = invoke(runner, "predict", *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert TRACEBACK not in result.stderr and result.stdout == ""


def test_another_model_of_the_same_shapes_is_named_in_a_warning(runner, tmp_path, trained):
    # The tiny-llama preset has the folder's shapes (so the fingerprint matches) but random weights.
    folder, bundles = trained
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])
    result = invoke(runner, "predict", bundles["lm"], "--model", "tiny-llama", "--tokenizer", folder, "--data", data,
                    "--max-new-tokens", "2")
    assert result.exit_code == 0, result.stderr
    assert "warning: task 'lm' was trained on model 'tiny_llama'; predicting with 'tiny-llama'" in result.stderr
    assert "warning: preset 'tiny-llama' has random weights" in result.stderr
    assert json.loads(result.stdout)["row"] == 1
