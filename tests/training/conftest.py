"""Fixtures for the training-layer tests: one thread, seeded, and small model folders built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.support import LLAMA_SPEC, T5_SPEC, tiny_llama_folder, tokenizer_folder


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Two shared cores: one thread per test, and a fixed global seed."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory) -> Path:
    """A tiny pretrained-style causal LM folder (safetensors + tokenizer)."""
    return tiny_llama_folder(tmp_path_factory.mktemp("models") / "tiny_llama")


@pytest.fixture(scope="session")
def t5_tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer folder that ends every text with </s>, for the tiny-t5 preset."""
    return tokenizer_folder(tmp_path_factory.mktemp("tokenizers") / "t5", eos_after=True)


@pytest.fixture()
def llama_spec(tmp_path) -> Path:
    path = tmp_path / "lm.adapt"
    path.write_text(LLAMA_SPEC, encoding="utf-8")
    return path


@pytest.fixture()
def t5_spec(tmp_path) -> Path:
    path = tmp_path / "t5.adapt"
    path.write_text(T5_SPEC, encoding="utf-8")
    return path
