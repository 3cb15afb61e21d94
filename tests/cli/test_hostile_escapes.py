"""Issue 10 §2: text from files reaches the terminal with its control characters escaped.

A spec, a bundle's embedded spec (``adaptc show`` is git's textconv driver)
or a file name can hold terminal sequences: clear screen (``ESC [2J``), a
window title (``ESC ]0;...BEL``), an OSC 8 hyperlink, an 8-bit CSI
(U+009B), a carriage return that overwrites a line. Whatever ``adaptc``
prints shows them as escapes (``\\x1b``; ``\\u001b`` inside JSON, which
stays valid and equal); tab and newline stay layout.
"""

from __future__ import annotations

import json
import re

import pytest

import adaptlang

from .conftest import TRACEBACK, invoke

#: What must never reach a terminal raw: C0 but tab and newline, DEL, C1.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

SEQUENCES = {
    "clear-screen": "\x1b[2J",
    "window-title": "\x1b]0;pwned\x07",
    "osc8-link": "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "c1-csi": "\x9b31m",
    "carriage-return": "\roverwritten",
    "backspace-del": "ab\x08\x08\x7f",
}


def clean(text: str) -> None:
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} in output: {text!r}"


def spec_with(seq: str, *, error: bool = False) -> str:
    """A spec carrying ``seq`` in a comment and in a prompt's text; with ``error``, also a bad line."""
    bad = f"    rnak 2 # {seq}\n" if error else ""
    return (f"adaptlang 1\nmodel tiny-llama\n# {seq}\nprompt p {{\n    tokens 2\n    init   random # {seq}\n}}\n"
            f"lora a {{\n    on   layers[*].self_attn.q_proj\n    rank 2\n{bad}}}\n"
            f"task t = p + a\n")


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_diagnostics_escape_the_source_line(runner, tmp_path, seq):
    spec = tmp_path / "s.adapt"
    spec.write_text(spec_with(seq, error=True))
    result = invoke(runner, "check", spec)
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and TRACEBACK not in result.output
    clean(result.stdout + result.stderr)


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_a_stray_control_character_is_named_not_sent(runner, tmp_path, seq):
    spec = tmp_path / "s.adapt"
    spec.write_text(f"adaptlang 1\nlora a {{\n    on q_proj\n    rank 2 {seq}\n}}\n")
    result = invoke(runner, "check", spec)
    assert result.exit_code == 1, result.output
    clean(result.stdout + result.stderr)


def test_the_caret_stays_under_the_column(runner, tmp_path):
    spec = tmp_path / "s.adapt"
    spec.write_text("adaptlang 1\nlora a {\n    on q_proj # \x1b[2J\n    rnak 2\n}\n# \x1b]0;t\x07\n")
    result = invoke(runner, "check", spec)
    lines = result.stderr.splitlines()
    assert lines[1] == "        rnak 2" and lines[2] == "        ^^^^", result.stderr


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_a_file_name_with_controls_is_escaped(runner, tmp_path, seq):
    name = tmp_path / f"x{seq.replace('/', '_')}.adapt"
    missing = invoke(runner, "check", name)
    assert missing.exit_code == 2
    clean(missing.stdout + missing.stderr)
    name.write_text("adaptlang 1\nlora   a {\n on q_proj\n rank 2\n}\n")
    for args in (["fmt", "--check", name], ["fmt", "--diff", name], ["fmt", name]):
        result = invoke(runner, *args)
        assert result.exit_code in (0, 1), result.output
        clean(result.stdout + result.stderr)


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_fmt_diff_escapes_the_spec_text(runner, tmp_path, seq):
    spec = tmp_path / "s.adapt"
    spec.write_text(spec_with(seq).replace("rank 2", "rank    2"))
    result = invoke(runner, "fmt", "--diff", spec)
    assert result.exit_code == 0, result.output
    assert "@@" in result.stdout
    clean(result.stdout + result.stderr)
    assert spec.read_bytes() == spec_with(seq).replace("rank 2", "rank    2").encode()  # --diff writes nothing


#: Sequences a spec file can carry into a bundle (reading a file turns a lone CR into a newline).
IN_FILES = {k: v for k, v in SEQUENCES.items() if "\r" not in v}


@pytest.fixture(scope="module")
def hostile_bundles(tmp_path_factory):
    """One bundle per sequence, whose embedded spec source carries it."""
    import torch

    from adaptlang.plan.models import load_model

    torch.manual_seed(0)
    out = {}
    for key, seq in IN_FILES.items():
        folder = tmp_path_factory.mktemp(key)
        spec = folder / "s.adapt"
        spec.write_text(spec_with(seq).replace("task t = p + a", "task t = a"))
        adapted = adaptlang.apply(load_model("tiny-llama", device="cpu")[0], adaptlang.parse(spec))
        (out[key],) = adapted.save(folder / "b")
    return out


@pytest.mark.parametrize("key", list(IN_FILES), ids=list(IN_FILES))
def test_show_escapes_the_embedded_spec(runner, hostile_bundles, key):
    result = invoke(runner, "show", hostile_bundles[key])
    assert result.exit_code == 0, result.output
    assert "spec source s.adapt" in result.stdout
    clean(result.stdout + result.stderr)
    as_json = invoke(runner, "show", hostile_bundles[key], "--json")
    assert as_json.exit_code == 0
    clean(as_json.stdout)
    manifest = json.loads(as_json.stdout)  # still valid JSON, and the same text
    assert SEQUENCES[key] in "".join(manifest["spec"]["sources"].values())


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_diff_and_compile_escape_values_from_specs(runner, tmp_path, seq):
    old, new = tmp_path / "a.adapt", tmp_path / "b.adapt"
    text = f'adaptlang 1\nmodel tiny-llama\nprompt p {{\n    tokens 2\n    init text "{seq}"\n}}\ntask t = p\n'
    old.write_text(text)
    new.write_text(text.replace("tokens 2", "tokens 3").replace(seq, seq + seq))
    result = invoke(runner, "diff", old, new)
    assert result.exit_code in (0, 1), result.output  # 1: the OSC 8 sequence's backslash escapes the quote
    clean(result.stdout + result.stderr)
    for fmt in ("table", "json", "dot"):
        shown = invoke(runner, "compile", new, "-f", fmt)
        assert shown.exit_code in (0, 1), shown.output
        clean(shown.stdout + shown.stderr)
        if fmt == "json" and shown.exit_code == 0:
            json.loads(shown.stdout)
