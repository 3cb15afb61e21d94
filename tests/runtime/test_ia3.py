"""IA3 parts: fidelity to PEFT's IA3 layers, weights, merging and its refusal."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from peft import IA3Config, inject_adapter_in_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.site import SiteModule

IN, OUT = 12, 10


def make_base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(IN, OUT)
    layer = Conv1D(OUT, IN)  # weight (IN, OUT)
    nn.init.normal_(layer.weight, std=0.2)
    nn.init.normal_(layer.bias, std=0.1)
    return layer


def ia3_site(feedforward: bool = False) -> dict:
    """A plan IA3 site dict (design.md)."""
    return {"path": "layer", "module": "Linear", "in_features": IN, "out_features": OUT,
            "params": IN if feedforward else OUT, "init": "ones", "feedforward": feedforward}


def make_x(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 5, IN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_site():
    """Factory: a SiteModule around a fresh base with IA3 parts ``{name: feedforward}``, random vectors."""

    def build(kind: str = "linear", **parts: bool) -> SiteModule:
        site = SiteModule.wrap(make_base(kind))
        gen = torch.Generator().manual_seed(4)
        for name, feedforward in parts.items():
            part = site.add_part(name, "ia3", ia3_site(feedforward), None)
            with torch.no_grad():
                part.ia3_l.copy_(1 + 0.5 * torch.randn(part.ia3_l.shape, generator=gen))
        return site

    return build


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("feedforward", [False, True])
def test_forward_and_gradients_match_peft(kind, feedforward):
    base = make_base(kind)
    cfg = IA3Config(target_modules=["layer"], feedforward_modules=["layer"] if feedforward else [],
                    fan_in_fan_out=kind == "conv1d")
    peft_layer = inject_adapter_in_model(cfg, nn.Sequential(OrderedDict(layer=copy.deepcopy(base)))).layer
    site = SiteModule.wrap(copy.deepcopy(base))
    part = site.add_part("i", "ia3", ia3_site(feedforward), None)
    site.set_active([("i", 1.0)])
    theirs = peft_layer.ia3_l["default"]
    # Both start at ones; PEFT keeps (out, 1) or (1, in), we keep a flat vector.
    torch.testing.assert_close(part.ia3_l, theirs.detach().flatten(), atol=0, rtol=0)
    assert part.ia3_l.numel() == theirs.numel() == (IN if feedforward else OUT)
    with torch.no_grad():
        theirs.copy_(1 + 0.5 * torch.randn(theirs.shape, generator=torch.Generator().manual_seed(2)))
        part.ia3_l.copy_(theirs.flatten())
    x = make_x()
    ours, ref = site(x), peft_layer(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(part.ia3_l.grad, theirs.grad.flatten(), atol=1e-5, rtol=1e-5)


def test_fresh_vectors_change_nothing():
    site = SiteModule.wrap(make_base("linear"))
    site.add_part("o", "ia3", ia3_site(False), None)
    site.add_part("f", "ia3", ia3_site(True), None)
    site.set_active([("o", 0.3), ("f", 1.0)])
    x = make_x()
    torch.testing.assert_close(site(x), site.base(x), atol=0, rtol=0)


def test_weight_scales_the_change_and_factors_multiply(make_site):
    site = make_site("linear", a=False, b=False, f=True)
    x = make_x()
    base = site.base
    a, b, f = (site.parts[n].ia3_l.detach() for n in ("a", "b", "f"))
    site.set_active([("a", 0.5)])
    # Weight w uses the factor 1 + w (v - 1): half the change.
    torch.testing.assert_close(site(x), base(x) * (1 + 0.5 * (a - 1)), atol=1e-6, rtol=1e-6)
    site.set_active([("a", 0.0)])
    torch.testing.assert_close(site(x), base(x), atol=0, rtol=0)
    site.set_active([("a", 1.0), ("b", 2.0), ("f", 1.0)])
    expected = base(x * f) * a * (1 + 2.0 * (b - 1))
    torch.testing.assert_close(site(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_unmerge_round_trip(kind, make_site):
    site = make_site(kind, a=False, f=True, b=False)
    site.set_active([("a", 1.0), ("f", 0.5), ("b", -0.25)])
    x = make_x()
    unmerged = site(x)
    before = {k: v.clone() for k, v in site.base.state_dict().items()}
    site.merge()
    torch.testing.assert_close(site(x), unmerged, atol=1e-5, rtol=1e-5)
    site.unmerge()
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_zero_factor_merges_exactly_but_refuses_keep_none(make_site):
    site = make_site("linear", a=False)
    with torch.no_grad():
        site.parts["a"].ia3_l[3] = 0.0
    site.set_active([("a", 1.0)])
    before = {k: v.clone() for k, v in site.base.state_dict().items()}
    # No copy kept: dividing by the zero could not give row 3 back, so nothing changes.
    with pytest.raises(RuntimeApplyError, match="zero entry"):
        site.merge(keep="none")
    assert not site.merged
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key])
    # The default keeps the originals: the zero row merges and comes back bit for bit.
    site.merge()
    assert site.merged and not site.base.weight[3].any()
    site.unmerge()
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key]), key
    # At weight 0.5 the factor there is 0.5: merging without a copy is fine.
    site.set_active([("a", 0.5)])
    site.merge(keep="none")
    assert site.merged


def test_ia3_on_any_module_output_and_errors():
    norm = nn.LayerNorm(OUT)
    site = SiteModule.wrap(norm)
    part = site.add_part("n", "ia3", {"out_features": OUT, "feedforward": False}, None)
    with torch.no_grad():
        part.ia3_l.fill_(2.0)
    site.set_active([("n", 1.0)])
    h = torch.randn(2, OUT)
    torch.testing.assert_close(site(h), 2 * norm(h))
    with pytest.raises(RuntimeApplyError, match="cannot merge"):
        site.merge()
    with pytest.raises(RuntimeApplyError, match="token ids"):
        SiteModule.wrap(nn.Embedding(5, 4)).add_part("e", "ia3", {"feedforward": True}, None)
    with pytest.raises(RuntimeApplyError, match="out_features"):
        SiteModule.wrap(nn.Linear(4, 4)).add_part("e", "ia3", {"out_features": 5}, None)


@pytest.mark.parametrize("keep", ["device", "none"])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_with_lora_dora_and_sparse_at_one_site(kind, keep, make_site):
    # merging.py's closed form: W' = v * (g * W0 + K) * u, b' = v * (b0 + ...), all folded at once.
    site = make_site(kind, o=False, f=True)
    gen = torch.Generator().manual_seed(9)
    lora = {"in_features": IN, "out_features": OUT, "rank": 3, "alpha": 6.0}
    site.add_part("l", "lora", dict(lora, bias=True), gen)
    site.add_part("d", "lora", dict(lora, variant="dora"), gen)
    shape = list(site.base.weight.shape)
    site.add_part("s", "sparse", {"param": "weight", "shape": shape, "k": 15, "select": "magnitude"}, gen)
    with torch.no_grad():
        for name in ("l", "d", "s"):
            for p in site.parts[name].parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    site.set_active([("o", 0.5), ("l", 1.0), ("f", 1.0), ("d", 0.7), ("s", 2.0)])
    x = make_x()
    unmerged = site(x)
    before = {k: v.clone() for k, v in site.base.state_dict().items()}
    site.merge(keep=keep)
    torch.testing.assert_close(site(x), unmerged, atol=1e-5, rtol=1e-5)
    site.unmerge()
    if keep == "none":  # the arithmetic inverse: within rounding, the sparse entries exact
        for key, value in site.base.state_dict().items():
            torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)
        flat = site.base.weight.detach().reshape(-1)
        assert torch.equal(flat[site.parts["s"].indices], before["weight"].reshape(-1)[site.parts["s"].indices])
        return
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(site(x), unmerged)
