"""Shared helpers for bundle tests: seeded tiny models, a tokenizer, training, exact-state checks.

Test directories have no ``__init__.py``, so helpers reach tests as the
``bt`` fixture rather than by importing this module by name. The state
helpers come from ``tests/model_state.py``: "untouched" means the same
module and parameter objects at every path, bit-identical values, the same
``requires_grad`` flags, hooks and attribute names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import adaptlang
from tests.model_state import assert_same_state, capture_state

REPO = Path(__file__).resolve().parents[2]
MULTITASK = REPO / "specs" / "multitask.adapt"

@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Two shared cores: one thread per test, and a fixed global seed."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny(preset: str = "tiny-llama", seed: int = 0) -> nn.Module:
    """A ``tiny-*`` preset with seeded random weights (same seed, same weights), eval mode."""
    from adaptlang.plan.models import load_model

    torch.manual_seed(seed)
    model, _ = load_model(preset, device="cpu")
    return model.eval()


def small_llama(hidden: int = 256, seed: int = 0) -> nn.Module:
    """A 2-layer Llama of realistic layer width (for size measurements)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


class WordTokenizer:
    """Enough of a tokenizer for prompts initialised from text: one id per word (ids 1..63)."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1 + sum(map(ord, w)) % 63 for w in text.split()]}


def batch(seed: int = 1, length: int = 7, vocab: int = 64) -> dict[str, torch.Tensor]:
    """A causal-LM batch of 2 rows (labels = inputs)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def train(adapted: Any, task: str, steps: int = 3, seed: int = 0, lr: float = 1e-2) -> None:
    """A few seeded AdamW steps on one task (train mode; dropout seeded too)."""
    adapted.use(task)
    adapted.model.train()
    torch.manual_seed(seed)
    params = [p for _, p in adapted.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        opt.zero_grad()
        adapted(**batch(seed=100 + step)).loss.backward()
        opt.step()
    adapted.model.eval()


def outputs(adapted: Any, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Logits of every task on a fixed batch (eval mode, no grad)."""
    result = {}
    with torch.no_grad():
        for task in tasks or adapted.tasks:
            adapted.use(task)
            result[task] = adapted(**batch(seed=7)).logits.clone()
    return result


class Helpers:
    """The helpers above, as the ``bt`` fixture."""

    repo = REPO
    multitask = MULTITASK
    tiny = staticmethod(tiny)
    small_llama = staticmethod(small_llama)
    tokenizer = WordTokenizer()
    batch = staticmethod(batch)
    train = staticmethod(train)
    outputs = staticmethod(outputs)
    capture_state = staticmethod(capture_state)
    assert_same_state = staticmethod(assert_same_state)

    @staticmethod
    def apply(spec: Any, preset: str = "tiny-llama", seed: int = 0, **kwargs: Any) -> Any:
        """Applies a spec (path or text) to a fresh seeded tiny model."""
        return adaptlang.apply(tiny(preset, seed), spec, tokenizer=WordTokenizer(), **kwargs)

    @staticmethod
    def randomize(adapted: Any, seed: int = 3, scale: float = 0.1) -> None:
        """Moves every delta parameter off its initial value (B factors nonzero), seeded."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for task in adapted.tasks:
                for key, value in sorted(adapted.adapter_state_dict(task).items()):
                    value.add_(torch.randn(value.shape, generator=gen) * scale)


@pytest.fixture
def bt() -> Helpers:
    """Bundle test helpers."""
    return Helpers()


@pytest.fixture(scope="module")
def trained_multitask(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """LANGUAGE.md's multitask spec on tiny Llama, each task trained 3 seeded steps, then saved.

    Returns:
        ``{"adapted", "paths", "outputs", "folder"}``; the outputs are the
        trained model's logits per task (fp32).
    """
    torch.set_num_threads(1)
    adapted = Helpers.apply(MULTITASK)
    for i, task in enumerate(adapted.tasks):
        train(adapted, task, steps=3, seed=i)
    folder = tmp_path_factory.mktemp("multitask")
    paths = adapted.save(folder)
    return {"adapted": adapted, "paths": paths, "outputs": outputs(adapted), "folder": folder}

