"""Fixtures for the spec tests: a diagnostic checker and a factory for spec files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from adaptlang.errors import AdaptError
from adaptlang.spec import load_spec

_LOCATION = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.*)$")
H = "adaptlang 1\n"


def check_rendered(rendered: str, file: str, line: int, col: int, message: str,
                   hint: str | None = None) -> None:
    """Asserts a rendered diagnostic: location, message, caret under ``col``, hint.

    The source line and the caret line are both indented four spaces, so the
    first '^' sits at index ``4 + col - 1``.
    """
    lines = rendered.splitlines()
    m = _LOCATION.match(lines[0])
    assert m, rendered
    assert (m["file"], int(m["line"]), int(m["col"])) == (file, line, col), rendered
    assert message in m["message"], rendered
    caret = lines[2]
    assert set(caret.strip()) == {"^"} and caret.index("^") == 4 + col - 1, rendered
    if hint is not None:
        helps = [l for l in lines if l.startswith("  help: ")]
        assert helps and hint in helps[0], rendered


@pytest.fixture
def expect_rendered() -> Callable[..., None]:
    """The diagnostic checker."""
    return check_rendered


@pytest.fixture
def spec_error() -> Callable[..., AdaptError]:
    """Factory: lowers a spec that must fail, returns the error."""

    def lower_failing(source: str, **kwargs) -> AdaptError:
        with pytest.raises(AdaptError) as err:
            load_spec(source, **kwargs)
        return err.value

    return lower_failing


@pytest.fixture
def write_specs(tmp_path: Path) -> Callable[..., Path]:
    """Factory: writes ``{name: text}`` under a temporary folder; returns the folder."""

    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return tmp_path

    return write
