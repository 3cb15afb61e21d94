"""Long strings, huge files, control characters and a spec of 20,000 blocks.

Before: a string literal cost about 430 times its size in memory (the
string regex kept a backtracking frame per character), a spec had no size
limit, and a 1 MB spec of small blocks built a full parse tree, walked it
recursively, and ran the garbage collector over it again and again.
"""

from __future__ import annotations

import time

import pytest

from adaptlang.limits import MAX_SPEC_FILE_BYTES, MAX_STRING_LITERAL_CHARS
from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text
from adaptlang.syntax.parser import parse_text

from .hostile import HEADER, cli, expect_accepted, expect_refused, timed

MB = 1024 * 1024
STRING_LIMIT = f"longer than the limit of {MAX_STRING_LITERAL_CHARS:,} (MAX_STRING_LITERAL_CHARS)"
FILE_LIMIT = f"limit of {MAX_SPEC_FILE_BYTES:,}"  # as text: "... (MAX_SPEC_FILE_BYTES)"; as a file: "... bytes for a spec file (MAX_SPEC_FILE_BYTES)"


def prompt(init: str) -> str:
    return HEADER + "prompt p {\n    tokens 8\n    init text " + init + "\n}\n"


# (id, text, words, (line, column) or None): refused, and cheaply (memory bounded below).
REFUSED = [
    ("string_2MB_in_let", HEADER + 'let s = "' + "x" * (2 * MB) + '"\n', STRING_LIMIT, (2, 9)),
    ("string_2MB_prompt_init", prompt('"' + "x" * (2 * MB) + '"'), STRING_LIMIT, (4, 15)),
    ("string_2MB_use", HEADER + 'use "' + "x" * (2 * MB) + '"\n', STRING_LIMIT, (2, 5)),
    ("string_2MB_model", HEADER + 'model "' + "x" * (2 * MB) + '"\n', STRING_LIMIT, (2, 7)),
    ("string_2MB_escapes", HEADER + 'let s = "' + '\\"' * MB + "x" + '"\n', STRING_LIMIT, (2, 9)),
    ("string_2MB_unterminated", HEADER + 'let s = "' + "x" * (2 * MB) + "\n", "unterminated string", (2, 9)),
    ("file_over_limit", HEADER + ("# " + "x" * 1000 + "\n") * (MAX_SPEC_FILE_BYTES // 1000 + 1), FILE_LIMIT, None),
    ("nul_byte", HEADER + "let a = 1\x00\n", "stray character", (2, 10)),
    ("escape_sequence_outside_comment", HEADER + "let a = \x1b[2J1\n", "stray character", (2, 9)),
    ("vertical_tab", HEADER + "let a = 1\x0b\n", "stray character", (2, 10)),
    ("bidi_override", HEADER + "let a\u202e = 1\n", "stray character", (2, 6)),
]


@pytest.mark.parametrize("text, words, where", [pytest.param(t, w, p, id=i) for i, t, w, p in REFUSED])
def test_refused_cheaply(text, words, where, tmp_path):
    error, seconds, peak_mb = timed(lambda: load_spec(text))
    assert words in str(error)[:5000], str(error)[:2000]
    assert seconds < 60
    assert peak_mb < 40 * len(text) / MB + 50, peak_mb  # before: ~430 bytes a byte of string
    # A file named on the command line that is too big is refused before it is read: exit 2.
    expect_refused(text, words, tmp_path, where, exit_code=2 if words == FILE_LIMIT else 1)


def test_a_lone_carriage_return_is_a_stray_character_in_text_and_in_a_file(tmp_path):
    from adaptlang.errors import SpecError

    text = HEADER + "let a = 1\rlet b = 2\n"
    with pytest.raises(SpecError, match="stray character"):
        load_spec(text)
    path = tmp_path / "cr.adapt"
    path.write_text(text, encoding="utf-8")
    result = cli("check", path)  # a file reads as its text does: a lone `\r` ends no line
    assert result.exit_code == 1 and "stray character" in result.output, result.output
    path.write_bytes((HEADER + "let a = 1\nlet b = 2\n").replace("\n", "\r\n").encode())
    result = cli("check", path)  # Windows line ends are line ends
    assert result.exit_code == 0, result.output


def test_a_huge_spec_file_is_refused_before_it_is_read(tmp_path):
    from adaptlang.errors import UsageError
    from adaptlang.syntax.parser import parse_file

    path = tmp_path / "huge.adapt"
    with path.open("wb") as f:  # sparse: 1 GB on paper, nothing on disk
        f.truncate(1024 * MB)
    with pytest.raises(UsageError) as info:  # the file named is refused whole, as a missing one is
        parse_file(path)
    assert FILE_LIMIT in str(info.value) and str(path) in str(info.value)


# (id, text): long but within the limits; accepted with memory linear in the input.
ACCEPTED = [
    ("string_1MB_prompt_init", prompt('"' + "x" * MAX_STRING_LITERAL_CHARS + '"')),
    ("string_half_MB_of_escapes", prompt('"' + '\\"' * (MAX_STRING_LITERAL_CHARS // 2) + '"')),
    ("comment_5MB", HEADER + "# " + "x" * (5 * MB) + "\nlet a = 1\n"),
    ("control_characters_in_comments", HEADER + "# \x1b[2J \x07 \x00 \x0c \x1c \x85 \u2028 \u202e\nlet a = 1  # \x0c\x0b\n# c\n"),
    ("form_feed_between_tokens", HEADER + "let\x0ca = 1\n"),
    ("crlf_line_ends", HEADER.replace("\n", "\r\n") + "let a = 1  # c\r\n\r\nlet b = 2\r\n"),
    ("unicode_in_strings", prompt('"\u202e\u0000\\u \\\\ \U0001F600 \x1b[31m"')),
    ("many_blank_lines", HEADER + "\n" * 200_000 + "let a = 1\n"),
    ("many_semicolons", HEADER + "let a = 1" + ";" * 200_000 + "\n"),
]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in ACCEPTED])
def test_accepted_with_linear_memory(text, tmp_path):
    spec, seconds, peak_mb = timed(lambda: load_spec(text))
    assert not isinstance(spec, Exception), str(spec)[:2000]
    assert peak_mb < 40 * len(text) / MB + 50, peak_mb
    expect_accepted(text, tmp_path)


def blocks(n: int) -> str:
    return HEADER + "model llama\n\n" + "".join(
        f"lora d{i} {{\n    rank 8\n    on layers[*].self_attn.q_proj\n}}\n\n" for i in range(n))


def test_a_1MB_spec_of_20000_blocks_is_linear():
    text = blocks(20_000)
    start = time.perf_counter()
    spec = load_spec(text)
    assert len(spec.deltas) == 20_000
    assert format_text(text).count("lora d") == 20_000
    assert time.perf_counter() - start < 60  # before: the 11 MB one took 321 s


def test_the_parser_builds_no_parse_tree_and_keeps_no_garbage():
    # Linear memory: a 10x larger spec costs about 10x, with a small constant per byte.
    small, _, peak_small = timed(lambda: parse_text(blocks(1_000)))
    big, _, peak_big = timed(lambda: parse_text(blocks(10_000)))
    size = len(blocks(10_000)) / MB
    assert peak_big < 12 * peak_small
    assert peak_big < 300 * size, (peak_big, size)  # MB per MB of spec: the AST itself


# (id, text): layouts the formatter once crashed on or took quadratic time over.
FORMAT = [
    ("comment_after_semicolon_before_header", "; # c\nadaptlang 1\n"),  # was ValueError (exit 3)
    ("20000_comments_after_semicolons_in_a_block",  # was 30 s: a scan of every line per comment
     HEADER + "".join(f"let b{i} = 2\n" for i in range(20_000)) + "lora d {\n    on q_proj\n" + ";  # c\n" * 20_000 + "}\n"),
    ("100000_own_line_comments", HEADER + "# c\n" * 100_000 + "let a = 1\n"),
]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in FORMAT])
def test_formatting_odd_layouts_is_fast_and_stable(text, tmp_path):
    start = time.perf_counter()
    once = format_text(text)
    assert time.perf_counter() - start < 20
    assert format_text(once) == once
    expect_accepted(text, tmp_path)
