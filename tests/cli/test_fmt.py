"""``adaptc fmt``: in-place canonical rewrite, --check, --diff, meaning kept."""

from __future__ import annotations

from adaptlang.plan.compiler import compile_plan
from adaptlang.syntax.format import format_text

from .conftest import LOCATION, MULTITASK, TRACEBACK, UGLY_SPEC, assert_caret_under, invoke, write_spec


def test_fmt_rewrites_in_place_and_is_idempotent(runner, tmp_path):
    spec = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    result = invoke(runner, "fmt", spec)
    assert result.exit_code == 0, result.output
    formatted = spec.read_text()
    assert formatted == format_text(UGLY_SPEC, str(spec))
    assert formatted != UGLY_SPEC
    assert "reformatted" in result.stderr
    again = invoke(runner, "fmt", spec)
    assert again.exit_code == 0 and spec.read_text() == formatted
    assert "reformatted" not in again.stderr


def test_fmt_never_changes_the_plan(runner, tmp_path):
    spec = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    before = compile_plan(spec, "llama").to_json()
    assert invoke(runner, "fmt", spec).exit_code == 0
    assert compile_plan(spec, "llama").to_json() == before


def test_fmt_keeps_the_multitask_plan(runner, tmp_path):
    spec = write_spec(tmp_path, "multitask.adapt", MULTITASK.read_text())
    before = compile_plan(spec, "llama").to_json()
    assert invoke(runner, "fmt", spec).exit_code == 0
    assert compile_plan(spec, "llama").to_json() == before
    assert "# re-train existing parameters" in spec.read_text()  # comments survive


def test_fmt_check_lists_files_and_writes_nothing(runner, tmp_path):
    ugly = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    neat = write_spec(tmp_path, "neat.adapt", format_text(UGLY_SPEC, "neat.adapt"))
    result = invoke(runner, "fmt", "--check", ugly, neat)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"would reformat {ugly}"]
    assert "1 would be reformatted, 1 unchanged" in result.stderr
    assert ugly.read_text() == UGLY_SPEC


def test_fmt_check_passes_on_formatted_files(runner, tmp_path):
    neat = write_spec(tmp_path, "neat.adapt", format_text(UGLY_SPEC, "neat.adapt"))
    result = invoke(runner, "fmt", "--check", neat)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_fmt_diff_prints_a_unified_diff(runner, tmp_path):
    ugly = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    result = invoke(runner, "fmt", "--diff", ugly)
    assert result.exit_code == 0, result.output
    assert f"--- {ugly} (original)" in result.stdout
    assert f"+++ {ugly} (formatted)" in result.stdout
    assert "-let r=8" in result.stdout
    assert ugly.read_text() == UGLY_SPEC
    check = invoke(runner, "fmt", "--diff", "--check", ugly)
    assert check.exit_code == 1 and "@@" in check.stdout


def test_fmt_reports_syntax_errors_and_keeps_going(runner, tmp_path):
    bad = write_spec(tmp_path, "bad.adapt", "adaptlang 1\nlora attn {\n    on q_proj\n    rank = 8\n")
    ugly = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    result = invoke(runner, "fmt", bad, ugly)
    assert result.exit_code == 1
    match = LOCATION.search(result.stderr)
    assert match and match["file"].endswith("bad.adapt"), result.stderr
    assert_caret_under(result.stderr, int(match["col"]))
    assert bad.read_text().startswith("adaptlang 1\nlora attn {")
    assert ugly.read_text() != UGLY_SPEC  # the good file was still formatted
    assert TRACEBACK not in result.output


def test_fmt_missing_file_is_usage_error(runner, tmp_path):
    result = invoke(runner, "fmt", tmp_path / "missing.adapt")
    assert result.exit_code == 2
    assert "missing.adapt: error: no such file" in result.stderr
