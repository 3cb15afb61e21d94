"""Fixtures for the syntax tests: the repository's specs and a diagnostic checker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.adapt"))
LANGUAGE_MD = Path("/work/shared/LANGUAGE.md")

_LOCATION = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.*)$")


def check_rendered(rendered: str, file: str, line: int, col: int, message: str,
                   hint: str | None = None) -> None:
    """Asserts the first diagnostic of ``rendered``: location, message, caret column and hint.

    The caret line sits under the source line, both indented four spaces, so
    the first '^' is at index ``4 + col - 1``.
    """
    lines = rendered.splitlines()
    m = _LOCATION.match(lines[0])
    assert m, rendered
    assert (m["file"], int(m["line"]), int(m["col"])) == (file, line, col), rendered
    assert f"{file}:{line}:{col}: error:" in lines[0]
    assert message in m["message"], rendered
    caret = lines[2]
    assert set(caret.strip()) == {"^"}, rendered
    assert caret.index("^") == 4 + col - 1, rendered
    if hint is not None:
        helps = [l for l in lines if l.startswith("  help: ")]
        assert helps and hint in helps[0], rendered


@pytest.fixture
def expect_rendered() -> Callable[..., None]:
    """The diagnostic checker, as a fixture."""
    return check_rendered


def language_md_blocks() -> list[str]:
    """The fenced code blocks of LANGUAGE.md (the contract's examples)."""
    text = LANGUAGE_MD.read_text(encoding="utf-8")
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
