"""``adaptc compile`` and ``adaptc check`` against the real compiler."""

from __future__ import annotations

import json
import re

import pytest

from adaptlang.cli import compile_cmds
from adaptlang.plan.compiler import compile_plan

from .conftest import (
    BAD_SPEC, LOCATION, MULTITASK, SMALL_SPEC, TRACEBACK, assert_caret_under, invoke, write_spec,
)

# LANGUAGE.md's exact numbers for specs/multitask.adapt on the llama preset.
DELTA_PARAMS = {"attn": "4,194,304", "mlp": "7,249,920", "bottleneck": "16,910,336",
                "instruct": "81,920", "head": "131,072,000"}
TASK_PARAMS = {"sentiment": ("21,104,640", "21,104,640"), "qa": ("11,444,224", "11,444,224"),
               "both": ("28,354,560", "28,354,560"), "qa_v2": ("131,153,920", "142,598,144")}


@pytest.fixture(scope="module")
def multitask_json() -> str:
    """The reference plan JSON, straight from the library."""
    return compile_plan(MULTITASK, "llama").to_json()


def row_of(output: str, name: str) -> str:
    """Returns the first table row whose first cell is ``name``."""
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] == name:
            return line
    raise AssertionError(f"no row {name!r} in:\n{output}")


def test_compile_table_shows_the_contract_numbers(runner):
    result = invoke(runner, "compile", MULTITASK, "--model", "llama")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "LlamaForCausalLM" in out and "fingerprint" in out and "sha256" in out
    for name, params in DELTA_PARAMS.items():
        assert params in row_of(out, name)
    for name, (trainable, bundle) in TASK_PARAMS.items():
        row = row_of(out, name)
        assert trainable in row and bundle in row and "GiB" in row
    assert "frozen(attn)" in row_of(out, "qa_v2")


def test_compile_json_is_byte_identical_to_the_library(runner, multitask_json):
    first = invoke(runner, "compile", MULTITASK, "--model", "llama", "--format", "json")
    second = invoke(runner, "compile", MULTITASK, "--model", "llama", "--format", "json")
    assert first.exit_code == 0, first.output
    assert first.stdout_bytes == second.stdout_bytes == multitask_json.encode()
    assert first.stderr == ""
    json.loads(first.stdout)


def test_compile_uses_the_spec_model_by_default(runner, multitask_json):
    result = invoke(runner, "compile", MULTITASK, "-f", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == multitask_json


def test_compile_json_to_file(runner, tmp_path, multitask_json):
    out = tmp_path / "plan.json"
    result = invoke(runner, "compile", MULTITASK, "--model", "llama", "--format", "json", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_bytes() == multitask_json.encode()


def test_compile_table_to_file_is_plain_text(runner, tmp_path):
    out = tmp_path / "plan.txt"
    result = invoke(runner, "compile", MULTITASK, "--model", "llama", "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "\x1b[" not in text and "131,153,920" in text


def test_compile_dot(runner):
    result = invoke(runner, "compile", MULTITASK, "--model", "llama", "--format", "dot")
    assert result.exit_code == 0, result.output
    assert result.stdout == compile_plan(MULTITASK, "llama").to_dot().rstrip("\n") + "\n"
    assert "digraph" in result.stdout


def test_set_overrides_a_constant(runner, tmp_path):
    spec = write_spec(tmp_path, "small.adapt", SMALL_SPEC)
    base = json.loads(invoke(runner, "compile", spec, "-f", "json").stdout)
    result = invoke(runner, "compile", spec, "-f", "json", "--set", "r=16")
    assert result.exit_code == 0, result.output
    bigger = json.loads(result.stdout)
    assert base["deltas"]["attn"]["params"] == 64 * 8 * (4096 + 4096)
    assert bigger["deltas"]["attn"]["params"] == 2 * base["deltas"]["attn"]["params"]
    assert bigger["tasks"]["main"]["trainable_params"] == 2 * base["tasks"]["main"]["trainable_params"]
    assert result.stdout == compile_plan(spec, None, overrides={"r": 16}).to_json()


def test_set_changes_the_multitask_table(runner):
    result = invoke(runner, "compile", MULTITASK, "--model", "llama", "--set", "r=16")
    assert result.exit_code == 0, result.output
    assert "8,388,608" in row_of(result.stdout, "attn")


@pytest.mark.parametrize("bad", ["r", "r=sixteen", "=16"])
def test_bad_set_is_a_usage_error(runner, bad):
    result = invoke(runner, "compile", MULTITASK, "--set", bad)
    assert result.exit_code == 2
    assert "--set" in result.stderr
    assert TRACEBACK not in result.output


def test_missing_spec_is_a_usage_error(runner, tmp_path):
    result = invoke(runner, "compile", tmp_path / "nope.adapt")
    assert result.exit_code == 2
    assert "nope.adapt: error: no such file" in result.stderr


def test_spec_error_shows_location_and_caret(runner, tmp_path):
    spec = write_spec(tmp_path, "bad.adapt", BAD_SPEC)
    result = invoke(runner, "compile", spec, "--model", "llama")
    assert result.exit_code == 1
    assert result.stdout == ""
    match = LOCATION.search(result.stderr)
    assert match and match["file"].endswith("bad.adapt") and match["line"] == "4", result.stderr
    assert_caret_under(result.stderr, int(match["col"]))
    assert "rank" in result.stderr  # the suggestion
    assert TRACEBACK not in result.output


def test_bind_error_exits_1_with_nearest_paths(runner, tmp_path):
    spec = write_spec(tmp_path, "nomatch.adapt", SMALL_SPEC.replace("q_proj", "q_prj"))
    result = invoke(runner, "compile", spec)
    assert result.exit_code == 1
    match = LOCATION.search(result.stderr)
    assert match and match["line"] == "7", result.stderr
    assert_caret_under(result.stderr, int(match["col"]))
    assert "q_proj" in result.stderr
    assert TRACEBACK not in result.output


def test_out_dir_goes_to_the_bundle_handler(runner, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(compile_cmds, "_out_handler", None)
    compile_cmds.set_out_handler(seen.append)
    spec = write_spec(tmp_path, "small.adapt", SMALL_SPEC)
    result = invoke(runner, "compile", spec, "--out", tmp_path / "bundles", "--set", "r=4")
    assert result.exit_code == 0, result.output
    assert len(seen) == 1
    assert seen[0].out_dir == tmp_path / "bundles" and seen[0].overrides == {"r": 4}
    assert seen[0].plan.to_dict()["tasks"]["main"]["trainable_params"] == 64 * 4 * 8192


def test_check_without_model(runner):
    result = invoke(runner, "check", MULTITASK)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 5 deltas, 4 tasks"


def test_check_with_model_binds(runner, tmp_path):
    result = invoke(runner, "check", MULTITASK, "--model", "llama")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 5 deltas, 4 tasks; bound to llama")
    spec = write_spec(tmp_path, "nomatch.adapt", SMALL_SPEC.replace("q_proj", "q_prj"))
    assert invoke(runner, "check", spec).exit_code == 0  # no model: selectors are not bound
    assert invoke(runner, "check", spec, "--model", "llama").exit_code == 1


def test_check_reports_spec_errors(runner, tmp_path):
    spec = write_spec(tmp_path, "bad.adapt", BAD_SPEC)
    result = invoke(runner, "check", spec)
    assert result.exit_code == 1
    match = LOCATION.search(result.stderr)
    assert match and match["line"] == "4"
    assert_caret_under(result.stderr, int(match["col"]))
    assert TRACEBACK not in result.output
