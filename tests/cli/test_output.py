"""Output helpers: number formats, atomic writes, diagnostics kept verbatim, pure helpers."""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console

from adaptlang.cli.compile_cmds import parse_overrides
from adaptlang.cli.output import (
    format_bytes, format_count, format_share, print_diagnostics, style_diagnostic, write_atomic,
)
from adaptlang.cli.selector_arg import SELECTOR_FILE, remap
from adaptlang.plan.plan import format_term as term_text
from adaptlang.cli.tree import compress_paths, group_runs, ranges_text
from adaptlang.errors import Diagnostic, Span, UsageError


def test_format_count_and_bytes():
    assert format_count(4194304) == "4,194,304"
    assert format_count(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_bytes(1536) == "1.5 KiB"


def test_format_share_stays_visible_for_small_parts():
    assert format_share(1, 2) == "50.00%"
    assert format_share(4194304, 6738415616) == "0.06%"
    assert format_share(81920, 6738415616) == "0.001%"
    assert format_share(0, 10) == "0%"


def test_write_atomic_replaces_and_keeps_mode(tmp_path):
    path = tmp_path / "a.adapt"
    path.write_text("old\r\n")
    os.chmod(path, 0o640)
    write_atomic(path, "new\n")
    assert path.read_bytes() == b"new\n"
    assert (path.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.adapt"]


def test_write_atomic_creates_new_file(tmp_path):
    path = tmp_path / "plan.json"
    write_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"


def test_styled_diagnostic_keeps_text_and_ignores_markup():
    diag = Diagnostic("bad [red]name[/red]", span=Span("f.adapt", 1, 5, 1, 8),
                      source_line="lora [x] {", hint="did you mean '[q]'?", notes=("near: a.b",))
    assert style_diagnostic(diag.render()).plain == diag.render()
    buffer = io.StringIO()
    print_diagnostics([diag, diag], Console(file=buffer, markup=False, highlight=False, width=20,
                                            soft_wrap=True, color_system=None))
    assert buffer.getvalue() == diag.render() + "\n\n" + diag.render() + "\n"


def test_parse_overrides_numbers():
    assert parse_overrides(["r=16", "p = 0.05", "r=4"]) == {"r": 4, "p": 0.05}
    assert isinstance(parse_overrides(["r=16"])["r"], int)
    assert parse_overrides(None) == {}


@pytest.mark.parametrize("bad", ["r", "=3", "r=", "r=abc", "1r=3", "r=nan", "r=inf", "a.b=1"])
def test_parse_overrides_rejects_bad_forms(bad):
    with pytest.raises(UsageError) as info:
        parse_overrides([bad])
    assert info.value.exit_code == 2


def test_group_runs_and_ranges():
    assert group_runs(list("abcde"), [1, 1, 2, 2, 1]) == [["a", "b"], ["c", "d"], ["e"]]
    assert ranges_text([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8"
    assert ranges_text([]) == ""


def test_compress_paths():
    paths = [f"model.layers.{i}.self_attn.q_proj" for i in range(32)] + ["lm_head"]
    assert compress_paths(paths) == ["model.layers[0..31].self_attn.q_proj", "lm_head"]
    assert compress_paths(["h.0.attn", "h.2.attn"]) == ["h[0, 2].attn"]


def test_term_text():
    assert term_text({"name": "attn", "weight": 1.0, "frozen": False}) == "attn"
    assert term_text({"name": "mlp", "weight": 0.5, "frozen": False}) == "0.5 * mlp"
    assert term_text({"name": "qa", "weight": 1.0, "frozen": True}) == "frozen(qa)"


def test_remap_moves_wrapped_span_onto_selector():
    text = "layers[*].self_atn"
    prefix = len("tune x { params ")
    diag = Diagnostic("no match", span=Span(SELECTOR_FILE, 2, prefix + 11, 2, prefix + 19))
    moved = remap(diag, text, prefix)
    assert moved.span == Span(SELECTOR_FILE, 1, 11, 1, 19)
    assert moved.render().splitlines()[1:3] == ["    " + text, "    " + " " * 10 + "^" * 8]
