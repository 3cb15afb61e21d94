"""Bottleneck adapters: the placement formulas, tuple outputs, order, weights, and HF models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.binding import resolve_module, split_path
from adaptlang.runtime.site import SiteModule

DIM, SIZE = 16, 4


def adapter_site(**overrides) -> dict:
    """A plan adapter site dict (design.md)."""
    site = {"path": "m", "module": "Linear", "placement": "after", "dim": DIM, "size": SIZE, "act": "gelu",
            "dropout": 0.0, "scale": 1.0, "residual": True, "params": 2 * DIM * SIZE + SIZE + DIM}
    site.update(overrides)
    return site


def reference(part, h: torch.Tensor) -> torch.Tensor:
    """up(act(down(h))) written out from the part's weights."""
    act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}[part.act_name]
    z = act(h @ part.down.weight.t() + part.down.bias)
    return z @ part.up.weight.t() + part.up.bias


def randomize(part, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in part.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture
def make_site():
    """Factory: SiteModule around ``module`` with adapters ``{name: site overrides}``, randomized."""

    def build(module: nn.Module, **parts: dict) -> SiteModule:
        site = SiteModule.wrap(module)
        for i, (name, overrides) in enumerate(parts.items()):
            part = site.add_part(name, "adapter", adapter_site(**overrides), torch.Generator().manual_seed(i))
            randomize(part, seed=i + 1)
        return site

    return build


def test_fresh_adapter_changes_nothing_and_counts_params():
    base = nn.Linear(DIM, DIM)
    site = SiteModule.wrap(base)
    part = site.add_part("a", "adapter", adapter_site(), torch.Generator().manual_seed(0))
    site.set_active([("a", 1.0)])
    x = torch.randn(2, 3, DIM)
    torch.testing.assert_close(site(x), base(x), atol=0, rtol=0)
    assert torch.count_nonzero(part.up.weight) == 0 and torch.count_nonzero(part.down.weight) > 0
    assert sum(p.numel() for p in part.adapter_params().values()) == 2 * DIM * SIZE + SIZE + DIM


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "tanh"])
def test_placements_follow_their_formulas(act, make_site):
    base = nn.Linear(DIM, DIM)
    x = torch.randn(2, 3, DIM)
    site = make_site(base, a={"act": act, "scale": 0.5}, b={"placement": "before", "act": act},
                     p={"placement": "parallel", "act": act, "scale": 2.0},
                     r={"residual": False, "act": act})
    a, b, p, r = (site.parts[n] for n in "abpr")
    site.set_active([("a", 1.0)])
    h = base(x)
    torch.testing.assert_close(site(x), h + 0.5 * reference(a, h), atol=1e-5, rtol=1e-5)
    site.set_active([("b", 1.0)])
    torch.testing.assert_close(site(x), base(x + reference(b, x)), atol=1e-5, rtol=1e-5)
    site.set_active([("p", 0.25)])  # the task weight multiplies the scale
    torch.testing.assert_close(site(x), h + 0.25 * 2.0 * reference(p, x), atol=1e-5, rtol=1e-5)
    site.set_active([("r", 1.0)])
    torch.testing.assert_close(site(x), reference(r, h), atol=1e-5, rtol=1e-5)


def test_adapters_run_in_activation_order(make_site):
    base = nn.Linear(DIM, DIM)
    x = torch.randn(2, 3, DIM)
    site = make_site(base, a={}, b={})
    a, b = site.parts["a"], site.parts["b"]
    h = base(x)
    after_a = h + reference(a, h)
    site.set_active([("a", 1.0), ("b", 1.0)])
    ab = site(x)
    torch.testing.assert_close(ab, after_a + reference(b, after_a), atol=1e-5, rtol=1e-5)
    site.set_active([("b", 1.0), ("a", 1.0)])
    assert not torch.allclose(site(x), ab, atol=1e-4)


def test_dropout_only_in_training(make_site):
    site = make_site(nn.Linear(DIM, DIM), a={"dropout": 0.5})
    site.set_active([("a", 1.0)])
    x = torch.randn(4, 8, DIM)
    site.eval()
    y_eval = site(x)
    torch.testing.assert_close(site(x), y_eval, atol=0, rtol=0)
    site.train()
    assert not torch.allclose(site(x), y_eval, atol=1e-4)


class TupleModule(nn.Module):
    """Returns (tensor, extra) like an HF attention layer, and takes its input by keyword."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, hidden_states, scale=1.0):
        return self.proj(hidden_states) * scale, "extra"


def test_tuple_outputs_and_keyword_inputs(make_site):
    module = TupleModule()
    site = make_site(module, a={}, b={"placement": "before"})
    a, b = site.parts["a"], site.parts["b"]
    x = torch.randn(2, 3, DIM)
    site.set_active([("b", 1.0), ("a", 1.0)])
    out, extra = site(hidden_states=x, scale=2.0)
    h = module(hidden_states=x + reference(b, x), scale=2.0)[0]
    assert extra == "extra"
    torch.testing.assert_close(out, h + reference(a, h), atol=1e-5, rtol=1e-5)


def wrap_path(model: nn.Module, path: str) -> SiteModule:
    """Swaps a SiteModule in at ``path`` by hand (what the transaction does)."""
    parent_path, name = split_path(path)
    parent = resolve_module(model, parent_path, unwrap=True)
    site = SiteModule.wrap(parent._modules[name])
    parent._modules[name] = site
    return site


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
def test_houlsby_and_pfeiffer_placements_in_llama(style, rt):
    model = rt.tiny_llama()
    reference_model = rt.tiny_llama()  # same seed, same weights; adapters added as hooks
    batch = rt.lm_batch()
    targets = ["mlp"] + (["self_attn"] if style == "houlsby" else [])
    for layer in range(2):
        for i, target in enumerate(targets):
            path = f"model.layers.{layer}.{target}"
            site = wrap_path(model, path)
            part = site.add_part("ad", "adapter", adapter_site(dim=32, size=8),
                                 torch.Generator().manual_seed(layer))
            randomize(part, seed=10 * layer + i)
            site.set_active([("ad", 1.0)])

            def hook(module, args, output, part=part):
                if isinstance(output, tuple):
                    return (output[0] + reference(part, output[0]),) + output[1:]
                return output + reference(part, output)

            resolve_module(reference_model, path).register_forward_hook(hook)
    out = model(**batch)
    expected = reference_model(**batch)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    site = resolve_module(model, "model.layers.0.mlp")
    assert site.parts["ad"].up.weight.grad is not None


def test_bad_adapters_are_errors():
    with pytest.raises(RuntimeApplyError, match="placement"):
        SiteModule.wrap(nn.Linear(DIM, DIM)).add_part("a", "adapter", adapter_site(placement="around"), None)
    with pytest.raises(RuntimeApplyError, match="did you mean 'gelu'"):
        SiteModule.wrap(nn.Linear(DIM, DIM)).add_part("a", "adapter", adapter_site(act="gelux"), None)
    with pytest.raises(RuntimeApplyError, match="equal input and output"):
        SiteModule.wrap(nn.Linear(DIM, 8)).add_part("a", "adapter", adapter_site(placement="parallel"), None)
    site = SiteModule.wrap(nn.Linear(DIM, DIM))
    site.add_part("a", "adapter", adapter_site(), None)
    site.set_active([("a", 1.0)])
    with pytest.raises(RuntimeApplyError, match="nothing here can merge"):
        site.merge()
