"""Repository-wide pytest set-up: ``--update-golden`` rewrites golden files; a private signature cache."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keeps the preset-signature cache of this run in a fresh folder (never the user's)."""
    os.environ["ADAPTLANG_CACHE_DIR"] = tempfile.mkdtemp(prefix="adaptlang-cache-")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Adds ``--update-golden``: tests that compare with golden files rewrite them instead."""
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (tests/golden/) from the current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden files."""
    return bool(request.config.getoption("--update-golden"))
