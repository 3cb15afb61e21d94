"""Sparse deltas: entry selection, the functional update, gradients, exact merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.site import SiteModule
from adaptlang.runtime.sparse import count_entries

IN, OUT, K = 12, 10, 9


def sparse_site(**overrides) -> dict:
    """A plan sparse site dict (design.md)."""
    site = {"path": "layer", "param": "weight", "shape": [OUT, IN], "density": K / (IN * OUT), "k": K,
            "select": "magnitude", "seed": 0, "params": K}
    site.update(overrides)
    return site


@pytest.fixture
def make_site():
    """Factory: SiteModule around a seeded Linear with sparse parts ``{name: site overrides}``."""

    def build(**parts: dict) -> SiteModule:
        torch.manual_seed(0)
        site = SiteModule.wrap(nn.Linear(IN, OUT))
        for name, overrides in parts.items():
            site.add_part(name, "sparse", sparse_site(**overrides), torch.Generator().manual_seed(1))
        return site

    return build


def fill(part, seed: int = 2) -> None:
    with torch.no_grad():
        part.values.copy_(torch.randn(part.k, generator=torch.Generator().manual_seed(seed)))


def test_k_follows_the_plan_rule():
    assert count_entries(0.005, 10_000) == 50
    assert count_entries(0.0001, 100) == 1  # at least one entry


def test_magnitude_picks_the_largest_entries(make_site):
    site = make_site(s={})
    part = site.parts["s"]
    w = site.base.weight.detach().reshape(-1).abs()
    expected = torch.sort(torch.topk(w, K).indices).values
    assert torch.equal(part.indices, expected)
    assert part.adapter_buffers()["indices"] is part.indices
    assert set(part.adapter_params()) == {"values"} and part.values.numel() == K


def test_random_selection_is_seeded_by_the_site(make_site):
    site = make_site(a={"select": "random", "seed": 3}, b={"select": "random", "seed": 3},
                     c={"select": "random", "seed": 4})
    a, b, c = (site.parts[n].indices for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == K and bool((a[1:] > a[:-1]).all())  # distinct, sorted


def test_forward_is_w_plus_scatter_and_only_values_get_gradients(make_site):
    site = make_site(s={})
    part = site.parts["s"]
    x = torch.randn(3, 5, IN)
    site.set_active([("s", 1.0)])
    torch.testing.assert_close(site(x), site.base(x), atol=0, rtol=0)  # fresh: values zero
    fill(part)
    dense = torch.zeros(OUT * IN).index_put((part.indices,), part.values.detach()).view(OUT, IN)
    expected = nn.functional.linear(x, site.base.weight + dense, site.base.bias)
    out = site(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    site.base.weight.requires_grad_(False)
    out.pow(2).sum().backward()
    full = (x.reshape(-1, IN).t() @ (2 * expected).reshape(-1, OUT)).t().reshape(-1)  # dL/dW, flat
    torch.testing.assert_close(part.values.grad, full[part.indices], atol=1e-4, rtol=1e-5)
    assert site.base.weight.grad is None
    site.set_active([("s", 0.5)])  # a weight scales the values
    expected = nn.functional.linear(x, site.base.weight + 0.5 * dense, site.base.bias)
    torch.testing.assert_close(site(x), expected, atol=1e-6, rtol=1e-6)


def test_merge_and_unmerge_are_exact(make_site):
    site = make_site(a={}, b={"select": "random", "seed": 1}, bias={"param": "bias", "shape": [OUT], "k": 3})
    for i, name in enumerate(("a", "b", "bias")):
        fill(site.parts[name], seed=i)
    site.set_active([("a", 1.0), ("b", 0.5), ("bias", 2.0)])
    x = torch.randn(3, 5, IN)
    unmerged = site(x)
    before = {k: v.clone() for k, v in site.base.state_dict().items()}
    site.merge()
    torch.testing.assert_close(site(x), unmerged, atol=1e-6, rtol=1e-6)
    site.unmerge()
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit-identical: merging saved the entries


def test_sparse_on_a_norm_weight():
    norm = nn.LayerNorm(IN)
    site = SiteModule.wrap(norm)
    part = site.add_part("n", "sparse", sparse_site(shape=[IN], k=2, select="random"), None)
    fill(part)
    site.set_active([("n", 1.0)])
    h = torch.randn(2, IN)
    weight = norm.weight.detach().clone()
    weight.view(-1)[part.indices] += part.values.detach()
    torch.testing.assert_close(site(h), nn.functional.layer_norm(h, (IN,), weight, norm.bias), atol=1e-6, rtol=1e-6)
    before = norm.weight.detach().clone()
    site.merge()
    torch.testing.assert_close(norm.weight.detach(), weight)
    site.unmerge()
    assert torch.equal(norm.weight.detach(), before)


def test_bad_sparse_sites_are_errors(make_site):
    with pytest.raises(RuntimeApplyError, match="shape"):
        make_site(s={"shape": [IN, OUT]})
    with pytest.raises(RuntimeApplyError, match="did you mean 'random'"):
        make_site(s={"select": "randm"})
    with pytest.raises(RuntimeApplyError, match="no parameter 'wieght'"):
        make_site(s={"param": "wieght"})
