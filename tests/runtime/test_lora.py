"""LoRA, rsLoRA and DoRA parts: fidelity to PEFT, merging, stacking, initialisation.

Reference numbers come from PEFT itself: the same base module is wrapped by
``peft.inject_adapter_in_model`` and by a ``SiteModule``, the same factor
values are copied into both, and outputs and gradients are compared in fp32.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.pytorch_utils import Conv1D

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.layers import describe_layer
from adaptlang.runtime.lora import LoRALinear, LoRAPart
from adaptlang.runtime.site import SiteModule

IN, OUT, NUM = 12, 10, 20


def make_base(kind: str, seed: int = 0) -> nn.Module:
    """A small base layer of each kind LoRA supports (Conv1D(nf=OUT, nx=IN): weight (IN, OUT))."""
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(IN, OUT)
    if kind == "conv1d":
        layer = Conv1D(OUT, IN)
        nn.init.normal_(layer.weight, std=0.2)
        nn.init.normal_(layer.bias, std=0.1)
        return layer
    return nn.Embedding(NUM, OUT)


def make_input(kind: str, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "embedding":
        return torch.randint(0, NUM, (3, 5), generator=gen)
    return torch.randn(3, 5, IN, generator=gen).requires_grad_(True)


def lora_site(**overrides) -> dict:
    """A plan LoRA site dict (design.md), rank 4 alpha 6 unless overridden."""
    site = {"path": "layer", "module": "Linear", "rank": 4, "alpha": 6.0, "dropout": 0.0, "init": "kaiming",
            "variant": "lora", "bias": False, "params": 0}
    site.update(overrides)
    return site


@pytest.fixture
def make_site():
    """Factory: a SiteModule around ``base`` with LoRA parts ``{name: site overrides}`` (inactive)."""

    def build(base: nn.Module, **parts: dict) -> SiteModule:
        site = SiteModule.wrap(base)
        for i, (name, overrides) in enumerate(parts.items()):
            site.add_part(name, "lora", lora_site(**overrides), torch.Generator().manual_seed(10 + i))
        return site

    return build


def randomize(site: SiteModule, seed: int = 3) -> None:
    """Gives every part parameter random values (B nonzero), so deltas are visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in site.parts.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == OUT else 0))


def peft_pair(kind: str, variant: str, bias: bool = False, dropout: float = 0.0):
    """The same base wrapped by PEFT and by a SiteModule, with equal factor values."""
    base = make_base(kind)
    container = nn.Sequential(OrderedDict(layer=copy.deepcopy(base)))
    cfg = LoraConfig(r=4, lora_alpha=6, target_modules=["layer"], use_dora=variant == "dora",
                     use_rslora=variant == "rslora", lora_bias=bias, lora_dropout=dropout,
                     fan_in_fan_out=kind == "conv1d")
    peft_model = inject_adapter_in_model(cfg, container)
    peft_layer = peft_model.layer
    site = SiteModule.wrap(copy.deepcopy(base))
    part = site.add_part("a", "lora", lora_site(variant=variant, bias=bias, dropout=dropout),
                         torch.Generator().manual_seed(0))
    site.set_active([("a", 1.0)])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if kind == "embedding":
            peft_a, peft_b = peft_layer.lora_embedding_A["default"], peft_layer.lora_embedding_B["default"]
        else:
            peft_a, peft_b = peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight
        peft_a.copy_(torch.randn(peft_a.shape, generator=gen) * 0.3)
        peft_b.copy_(torch.randn(peft_b.shape, generator=gen) * 0.3)
        part.lora_A.copy_(peft_a)
        part.lora_B.copy_(peft_b)
        if bias:
            peft_layer.lora_B["default"].bias.copy_(torch.randn(OUT, generator=gen))
            part.lora_bias.copy_(peft_layer.lora_B["default"].bias)
        if variant == "dora":
            peft_m = peft_layer.lora_magnitude_vector["default"].weight
            # Both start from the row norm of W (B was zero at creation).
            torch.testing.assert_close(part.magnitude, peft_m, atol=1e-6, rtol=1e-6)
            peft_m.copy_(peft_m + torch.randn(peft_m.shape, generator=gen) * 0.1)
            part.magnitude.copy_(peft_m)
    return peft_model, peft_layer, site, part


def peft_params(peft_layer, kind: str, variant: str, bias: bool) -> dict[str, torch.Tensor]:
    """PEFT's parameters under our local names."""
    if kind == "embedding":
        params = {"lora_A": peft_layer.lora_embedding_A["default"], "lora_B": peft_layer.lora_embedding_B["default"]}
    else:
        params = {"lora_A": peft_layer.lora_A["default"].weight, "lora_B": peft_layer.lora_B["default"].weight}
    if bias:
        params["lora_bias"] = peft_layer.lora_B["default"].bias
    if variant == "dora":
        params["magnitude"] = peft_layer.lora_magnitude_vector["default"].weight
    return params


CASES = [(k, v, False) for k in ("linear", "conv1d", "embedding") for v in ("lora", "rslora", "dora")]
CASES += [("linear", "lora", True), ("conv1d", "rslora", True)]  # PEFT has no DoRA with a bias


@pytest.mark.parametrize("kind,variant,bias", CASES)
def test_forward_and_gradients_match_peft(kind, variant, bias):
    peft_model, peft_layer, site, part = peft_pair(kind, variant, bias)
    x1, x2 = make_input(kind), make_input(kind)
    ours, ref = site(x1), peft_layer(x2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(5))
    ours.backward(grad)
    ref.backward(grad)
    theirs = peft_params(peft_layer, kind, variant, bias)
    assert set(part.adapter_params()) == set(theirs)
    for name, p in part.adapter_params().items():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-5, rtol=1e-5, msg=name)
    if kind != "embedding":
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    # Same parameter count as PEFT's trainable parameters, and as the plan's formula.
    peft_count = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    ours_count = sum(p.numel() for p in part.adapter_params().values())
    n_in = NUM if kind == "embedding" else IN
    assert ours_count == peft_count == 4 * (n_in + OUT) + OUT * (bias + (variant == "dora"))


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_dropout_in_training_matches_peft(variant):
    peft_model, peft_layer, site, part = peft_pair("linear", variant, dropout=0.3)
    peft_layer.train()
    site.train()
    x = make_input("linear")
    torch.manual_seed(11)  # same RNG draws: one dropout mask, drawn after the base forward, in both
    ours = site(x)
    torch.manual_seed(11)
    ref = peft_layer(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    site.eval()
    torch.testing.assert_close(site(x), peft_layer.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,variant,bias", CASES)
def test_merge_matches_peft_and_unmerge_restores(kind, variant, bias):
    peft_model, peft_layer, site, part = peft_pair(kind, variant, bias)
    x = make_input(kind).detach()
    unmerged = site(x)
    before = {k: v.clone() for k, v in site.base.state_dict().items()}
    site.merge()
    assert site.merged
    torch.testing.assert_close(site(x), unmerged, atol=1e-5, rtol=1e-5)
    peft_layer.merge()
    torch.testing.assert_close(site.base.weight, peft_layer.base_layer.weight, atol=1e-6, rtol=1e-6)
    site.unmerge()
    for key, value in site.base.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(site(x), unmerged)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_fresh_lora_changes_nothing(kind, make_site):
    base = make_base(kind)
    x = make_input(kind).detach()
    expected = base(x)
    site = make_site(base, a={}, b={"variant": "dora", "init": "gaussian"}, c={"variant": "rslora", "init": "zeros"})
    site.set_active([("a", 1.0), ("b", 0.5), ("c", 2.0)])
    if kind == "embedding":
        # PEFT's embedding init puts the zeros in A (B is random): still no change.
        assert torch.count_nonzero(site.parts["a"].lora_A) == 0
        assert torch.count_nonzero(site.parts["a"].lora_B) > 0
    torch.testing.assert_close(site(x), expected, atol=1e-6, rtol=0)


def test_inits_follow_peft_distributions():
    gen = torch.Generator().manual_seed(0)
    info = describe_layer(nn.Linear(256, 64))
    kaiming = LoRAPart(info, 16, init="kaiming", generator=gen)
    # kaiming_uniform_(a=sqrt(5)) on fan_in 256: U(-1/sqrt(256), 1/sqrt(256)) = U(-1/16, 1/16).
    assert kaiming.lora_A.abs().max() <= 1 / 16 and kaiming.lora_A.abs().max() > 0.9 / 16
    assert torch.count_nonzero(kaiming.lora_B) == 0
    gaussian = LoRAPart(info, 16, init="gaussian", generator=gen)
    # PEFT "gaussian": A ~ N(0, (1/r)^2) -> std 1/16 over 4096 draws (within 10%).
    assert abs(gaussian.lora_A.std().item() - 1 / 16) < 0.1 / 16
    zeros = LoRAPart(info, 16, init="zeros", generator=gen)
    assert torch.count_nonzero(zeros.lora_A) == 0 and torch.count_nonzero(zeros.lora_B) == 0
    # Same generator seed, same values: initialisation is reproducible.
    again = LoRAPart(info, 16, init="kaiming", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.lora_A, kaiming.lora_A, atol=0, rtol=0)


def test_scaling_follows_variant():
    info = describe_layer(nn.Linear(8, 8))
    assert LoRAPart(info, 4, 8).scaling == 2.0
    assert LoRAPart(info, 4, 8, variant="rslora").scaling == 8 / math.sqrt(4)
    assert LoRAPart(info, 4).scaling == 1.0  # alpha defaults to the rank


class MatmulCounter(TorchDispatchMode):
    """Counts matrix products (aten mm/addmm/bmm/addmm_/embedding) run under it."""

    NAMES = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.embedding")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.NAMES):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_stacked_loras_equal_the_weighted_sum_in_one_product(kind, make_site):
    base = make_base(kind)
    x = make_input(kind).detach()
    parts = {"a": {"rank": 2, "alpha": 4.0}, "b": {"rank": 4, "alpha": 4.0}, "c": {"rank": 3, "variant": "rslora"}}
    site = make_site(base, **parts)
    randomize(site)
    weights = {"a": 1.0, "b": 0.5, "c": -2.0}
    y0 = base(x)
    expected = y0.clone()
    for name, w in weights.items():
        site.set_active([(name, 1.0)])
        expected = expected + w * (site(x) - y0)
    site.set_active(list(weights.items()))
    with torch.no_grad(), MatmulCounter() as stacked:
        out = site(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    site.set_active([("a", 1.0)])
    with torch.no_grad(), MatmulCounter() as single:
        site(x)
    with torch.no_grad(), MatmulCounter() as plain:
        base(x)
    # One product for A and one for B, whatever the number of stacked deltas.
    assert stacked.count == single.count == plain.count + 2
    site.set_active(list(weights.items()))
    (group,) = site._prog.groups  # the concatenation plan made at set_active
    a, b = group.factors()
    assert a.shape == (9, NUM if kind == "embedding" else IN) and b.shape == (OUT, 9)


def test_stacked_merge_round_trip_and_dropout_groups(make_site):
    base = make_base("linear")
    x = make_input("linear").detach()
    site = make_site(base, a={"dropout": 0.1}, b={"dropout": 0.2}, c={"variant": "dora"}, d={"dropout": 0.1})
    randomize(site)
    site.set_active([("a", 1.0), ("b", 0.25), ("c", 0.5), ("d", 2.0)])
    assert sorted(g.dropout for g in site._prog.groups) == [0.1, 0.2]  # one product per probability
    site.train()
    torch.manual_seed(0)
    site(x).sum().backward()  # every part sees its own group's dropout and trains
    assert all(p.grad is not None for p in site.parts.parameters())
    site.eval()
    w0 = site.base.weight.detach().clone()
    unmerged = site(x)
    site.merge()
    torch.testing.assert_close(site(x), unmerged, atol=1e-5, rtol=1e-5)
    site.unmerge()
    assert torch.equal(site.base.weight, w0)


def test_lora_linear_drop_in(make_site):
    base = nn.Linear(IN, OUT)
    layer = LoRALinear.from_linear(base, rank=4, alpha=8, generator=torch.Generator().manual_seed(0))
    x = make_input("linear").detach()
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)
    with torch.no_grad():
        layer.lora.lora_B.normal_(generator=torch.Generator().manual_seed(1))
    expected = base(x) + 2.0 * (x @ layer.lora.lora_A.t() @ layer.lora.lora_B.t())
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    w0 = base.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    assert torch.equal(base.weight, w0)  # the kept copy, bit for bit
    dora = LoRALinear.from_linear(make_base("conv1d"), rank=2, variant="dora")
    assert set(dora.lora.adapter_params()) == {"lora_A", "lora_B", "magnitude"}


def test_bad_lora_options_are_errors(make_site):
    with pytest.raises(RuntimeApplyError, match="variant"):
        make_site(make_base("linear"), a={"variant": "lokr"})
    with pytest.raises(RuntimeApplyError, match="Embedding"):
        make_site(make_base("embedding"), a={"bias": True})
    with pytest.raises(RuntimeApplyError, match="in_features"):
        make_site(make_base("linear"), a={"in_features": IN + 1})
    with pytest.raises(RuntimeApplyError, match="LayerNorm"):
        make_site(nn.LayerNorm(IN), a={})


def test_half_precision_base_keeps_fp32_factors(make_site):
    base = make_base("linear").to(torch.bfloat16)
    site = make_site(base, a={}, b={"variant": "dora"})
    randomize(site)
    assert all(p.dtype == torch.float32 for p in site.parts.parameters())  # as PEFT's autocast_adapter_dtype
    x = make_input("linear").detach().to(torch.bfloat16)
    site.set_active([("a", 1.0), ("b", 1.0)])
    out = site(x)
    assert out.dtype == torch.bfloat16
    # Reference in fp32 from the same (bf16) base values.
    ref_site = make_site(copy.deepcopy(base).float(), a={}, b={"variant": "dora"})
    ref_site.load_state_dict(site.state_dict())
    ref_site.set_active([("a", 1.0), ("b", 1.0)])
    torch.testing.assert_close(out.float(), ref_site(x.float()), atol=3e-2, rtol=3e-2)
