"""The runtime's fast paths compute exactly what the plain formulas do.

* the fused LoRA ``nn.Linear`` (``runtime/fused.py``): outputs and every
  gradient equal autograd on ``W x + b + s B A x`` (with dropout, a base
  bias, a LoRA bias, stacked parts with different coefficients);
* the concatenated-factor cache follows in-place updates of the factors;
* programs precomputed at apply time: ``use()`` after training steps runs
  the trained values;
* ``deferred_values()`` skips initial values but nothing else.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptlang
from adaptlang.runtime.layers import deferred_values
from adaptlang.runtime.site import SiteModule

IN, OUT = 12, 10


def make_site(bias: bool = True, **parts: dict) -> SiteModule:
    """An nn.Linear site with LoRA parts whose A and B are both random (so every gradient is nonzero)."""
    torch.manual_seed(0)
    site = SiteModule.wrap(nn.Linear(IN, OUT, bias=bias))
    for k, (name, options) in enumerate(parts.items()):
        site.add_part(name, "lora", {"rank": 3, **options}, torch.Generator().manual_seed(k))
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in site.parts.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return site


def reference(site: SiteModule, x: torch.Tensor, weights: dict[str, float], masks: dict[float, torch.Tensor]) -> torch.Tensor:
    """``W x + b + sum_i w_i s_i (B_i A_i drop_p(x) + lb_i)`` with autograd on plain ops (PEFT's formula)."""
    y = F.linear(x, site.base.weight, site.base.bias)
    for name, w in weights.items():
        part = site.parts[name]
        xd = x * masks[part.dropout] if part.dropout else x
        y = y + w * part.scaling * F.linear(F.linear(xd, part.lora_A), part.lora_B, part.lora_bias)
    return y


@pytest.mark.parametrize("case", ["one", "stacked", "dropout", "lora_bias", "no_base_bias"])
def test_fused_forward_and_gradients_equal_plain_autograd(case):
    options = {
        "one": {"a": {}},
        "stacked": {"a": {"alpha": 6}, "b": {"variant": "rslora"}},
        "dropout": {"a": {"dropout": 0.3}, "b": {"dropout": 0.3, "alpha": 1}},
        "lora_bias": {"a": {"bias": True}},
        "no_base_bias": {"a": {}},
    }[case]
    site = make_site(bias=case != "no_base_bias", **options)
    weights = {name: 0.5 + k for k, name in enumerate(options)}
    site.set_active(list(weights.items()))
    assert site._prog.fusable
    site.base.weight.requires_grad_(True)  # the base weight's gradient too
    x = torch.randn(2, 5, IN, requires_grad=True)
    site.train(case == "dropout")
    torch.manual_seed(3)
    fused = site(x)
    grad_out = torch.randn_like(fused)
    params = [x, site.base.weight] + list(site.parts.parameters())
    got = torch.autograd.grad(fused, params, grad_out)
    # The same dropout mask: re-draw it from the same seed, as F.dropout does (one draw per group).
    torch.manual_seed(3)
    masks = {0.3: F.dropout(torch.ones_like(x), 0.3, True)} if case == "dropout" else {}
    want_out = reference(site, x, weights, masks)
    want = torch.autograd.grad(want_out, params, grad_out)
    torch.testing.assert_close(fused, want_out, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_hooked_or_subclassed_linear_is_not_fused():
    site = make_site(a={})
    site.set_active([("a", 1.0)])
    seen = []
    site.base.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(3, IN)
    with torch.no_grad():
        y = site(x)
    assert seen == [(3, OUT)]  # the hook ran: the module was called, not bypassed
    torch.testing.assert_close(y, reference(site, x, {"a": 1.0}, {}), atol=1e-5, rtol=1e-5)


def test_the_factor_cache_follows_in_place_updates():
    site = make_site(a={}, b={})
    site.set_active([("a", 1.0), ("b", 2.0)])
    x = torch.randn(4, IN)
    with torch.no_grad():
        site(x)
        site.parts["b"].lora_B.mul_(3.0)  # an optimiser step would do the same
        y = site(x)
    torch.testing.assert_close(y, reference(site, x, {"a": 1.0, "b": 2.0}, {}), atol=1e-5, rtol=1e-5)


def test_use_runs_the_trained_values(rt):
    spec = "adaptlang 1\nlora a {\n    on layers[*].self_attn.q_proj\n    rank 2\n}\ntask one = a\ntask none = a\n"
    spec = spec.replace("task none = a", "lora b {\n    on layers[*].self_attn.v_proj\n    rank 2\n}\ntask two = b")
    model = rt.tiny_llama()
    adapted = adaptlang.apply(model, spec, task="one")
    batch = rt.lm_batch()
    opt = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=0.5)
    for _ in range(2):  # B starts at zero: two steps make A and B both move
        adapted(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    adapted.use("two")
    adapted.use("one")  # a precomputed program, no rebuilding
    with torch.no_grad():
        out = adapted(**batch).logits
        adapted.merge()
        merged = adapted(**batch).logits
    torch.testing.assert_close(out, merged, atol=1e-5, rtol=1e-5)  # merging reads the trained values too
    assert not torch.equal(out, adapted.remove()(**batch).logits)


def test_deferred_values_skip_only_initial_values():
    base = nn.Linear(IN, OUT)
    with deferred_values():
        site = SiteModule.wrap(base)
        site.add_part("a", "lora", {"rank": 3, "variant": "dora"}, None)
        site.add_part("i", "ia3", {"out_features": OUT}, None)
    part = site.parts["a"]
    assert part.lora_A.shape == (3, IN) and part.magnitude.shape == (OUT,)
    assert torch.equal(site.parts["i"].ia3_l, torch.ones(OUT))  # other kinds initialise as usual
    site2 = SiteModule.wrap(nn.Linear(IN, OUT))
    site2.add_part("a", "lora", {"rank": 3}, None)
    assert torch.equal(site2.parts["a"].lora_B, torch.zeros(OUT, 3))  # outside the context: B starts at zero
