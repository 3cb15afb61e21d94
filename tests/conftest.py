"""Repository-wide pytest set-up: ``--update-golden`` rewrites golden files; a private signature cache."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keeps the preset-signature cache of this run in a fresh folder (never the user's)."""
    config._adaptlang_cache = tempfile.mkdtemp(prefix="adaptlang-cache-")  # type: ignore[attr-defined]
    os.environ["ADAPTLANG_CACHE_DIR"] = config._adaptlang_cache  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes the run's cache folder."""
    folder = getattr(config, "_adaptlang_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Adds ``--update-golden``: tests that compare with golden files rewrite them instead."""
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (tests/golden/) from the current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden files."""
    return bool(request.config.getoption("--update-golden"))
