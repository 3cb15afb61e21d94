"""Shared helpers for bundle tests: seeded tiny models, a tokenizer, training, exact-state checks.

Test directories have no ``__init__.py``, so helpers reach tests as the
``bt`` fixture rather than by importing this module by name. The state
helpers mirror ``tests/runtime/conftest.py``: "untouched" means the same
module and parameter objects at every path, bit-identical values, the same
``requires_grad`` flags, hooks and attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import adaptlang

REPO = Path(__file__).resolve().parents[2]
MULTITASK = REPO / "specs" / "multitask.adapt"

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
                "_load_state_dict_pre_hooks")


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


@dataclass
class ModelState:
    """Everything that must be identical after a failed load."""

    modules: dict[str, nn.Module]
    types: dict[str, type]
    params: dict[str, nn.Parameter]
    flags: dict[str, bool]
    values: dict[str, torch.Tensor]
    hooks: dict[str, tuple[int, ...]]
    attrs: dict[str, frozenset[str]]


def capture_state(model: nn.Module) -> ModelState:
    """Records a model's module/parameter objects, values, flags, hooks and attribute names."""
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    return ModelState(
        modules=modules, types={k: type(m) for k, m in modules.items()}, params=params,
        flags={k: p.requires_grad for k, p in params.items()},
        values={k: v.detach().clone() for k, v in model.state_dict().items()},
        hooks={k: tuple(len(getattr(m, t)) for t in _HOOK_TABLES) for k, m in modules.items()},
        attrs={k: frozenset(m.__dict__) for k, m in modules.items()})


def assert_same_state(model: nn.Module, before: ModelState) -> None:
    """Asserts ``model`` is exactly as ``before`` recorded."""
    after = capture_state(model)
    assert list(after.modules) == list(before.modules)
    for path, module in before.modules.items():
        assert after.modules[path] is module, f"module object at '{path}' changed"
    assert list(after.params) == list(before.params)
    for name, param in before.params.items():
        assert after.params[name] is param, f"parameter object '{name}' changed"
        assert after.flags[name] == before.flags[name], f"requires_grad of '{name}' changed"
    for key, value in before.values.items():
        assert torch.equal(after.values[key], value), f"value of '{key}' changed"
    assert after.hooks == before.hooks
    assert after.attrs == before.attrs


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

