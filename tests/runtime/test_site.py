"""SiteModule as a drop-in: wrapping, passthrough, state dicts, HF models, checkpointing, transactions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.adapted import Adapted
from adaptlang.runtime.binding import resolve_module, split_path
from adaptlang.runtime.program import BASE_ONLY, FULL, LORA_ONLY
from adaptlang.runtime.site import SiteModule
from adaptlang.runtime.transaction import patch_model

Q, K, V, MLP = ("model.layers.{}.self_attn.q_proj", "model.layers.{}.self_attn.k_proj",
                "model.layers.{}.self_attn.v_proj", "model.layers.{}.mlp")


def lora_site(path: str, in_features: int = 32, out_features: int = 32, **overrides) -> dict:
    site = {"path": path, "module": "Linear", "in_features": in_features, "out_features": out_features,
            "params": 0, "rank": 4, "alpha": 8.0, "dropout": 0.0, "init": "kaiming", "variant": "lora", "bias": False}
    site.update(overrides)
    return site


def mixed_plan() -> dict:
    """A plan dict (design.md fields) with every site kind on a tiny Llama, and three tasks."""
    q = [lora_site(Q.format(i)) for i in range(2)]
    v = [lora_site(V.format(i), out_features=16, variant="dora") for i in range(2)]
    return {
        "deltas": {
            "attn": {"kind": "lora", "sites": q + v},
            "ia": {"kind": "ia3", "sites": [{"path": K.format(0), "module": "Linear", "in_features": 32,
                                              "out_features": 16, "params": 16, "init": "ones",
                                              "feedforward": False}]},
            "ad": {"kind": "adapter", "sites": [{"path": MLP.format(i), "module": "LlamaMLP", "placement": "after",
                                                  "dim": 32, "size": 8, "act": "gelu", "dropout": 0.0, "scale": 1.0,
                                                  "residual": True, "params": 552} for i in range(2)]},
            "sp": {"kind": "sparse", "sites": [{"path": Q.format(1), "param": "weight", "shape": [32, 32],
                                                 "density": 0.01, "k": 10, "select": "random", "seed": 0,
                                                 "params": 10}]},
        },
        "tasks": {
            "one": {"deltas": [{"name": "attn", "weight": 1.0, "frozen": False},
                               {"name": "ad", "weight": 1.0, "frozen": False}]},
            "two": {"deltas": [{"name": "attn", "weight": 0.5, "frozen": True},
                               {"name": "ia", "weight": 1.0, "frozen": False},
                               {"name": "sp", "weight": 1.0, "frozen": False}]},
            "none": {"deltas": [{"name": "ia", "weight": 1.0, "frozen": True}]},
        },
    }


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Random values in every part parameter, so deltas change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SiteModule):
                for p in module.parts.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def wrap_path(model: nn.Module, path: str) -> SiteModule:
    """Swaps a SiteModule in at ``path`` by hand (what the transaction does)."""
    parent_path, name = split_path(path)
    parent = resolve_module(model, parent_path, unwrap=True)
    site = SiteModule.wrap(parent._modules[name])
    parent._modules[name] = site
    return site


def test_wrap_and_unwrap_leave_the_original_untouched(rt):
    model = rt.tiny_llama()
    before = rt.capture_state(model)
    parent = model.model.layers[0].self_attn
    original = parent.q_proj
    site = SiteModule.wrap(original)
    parent.q_proj = site
    site.add_part("a", "lora", lora_site(Q.format(0)), torch.Generator().manual_seed(0))
    site.set_active([("a", 1.0)])
    model(**rt.lm_batch())
    site.merge()
    site.unmerge()
    assert site.unwrap() is original and site.base is original
    parent.q_proj = original
    rt.assert_same_state(model, before)
    with pytest.raises(RuntimeApplyError, match="already"):
        SiteModule.wrap(site)


def test_attributes_pass_through(rt):
    gpt2 = rt.tiny_gpt2()
    conv = gpt2.transformer.h[0].attn.c_attn
    site = SiteModule.wrap(conv)
    assert site.nf == conv.nf == 96 and site.weight is conv.weight
    lin = SiteModule.wrap(nn.Linear(4, 3))
    assert (lin.in_features, lin.out_features) == (4, 3) and lin.bias is lin.base.bias
    tied = nn.Parameter(torch.zeros(3, 4))
    lin.weight = tied  # as HF's tie_weights does: the base's slot gets it
    assert lin.base.weight is tied and "weight" not in lin._parameters
    with pytest.raises(AttributeError):
        lin.no_such_attribute  # noqa: B018


def test_inactive_parts_cost_nothing_and_modes():
    base = nn.Linear(8, 8)
    site = SiteModule.wrap(base)
    site.add_part("a", "lora", {"rank": 2}, None)
    site.add_part("b", "adapter", {"placement": "after", "dim": 8, "size": 2}, None)
    x = torch.randn(3, 8)
    assert site._prog.mode == BASE_ONLY and site._prog.base is base
    torch.testing.assert_close(site(x), base(x), atol=0, rtol=0)
    site.set_active([("a", 1.0)])
    assert site._prog.mode == LORA_ONLY
    site.set_active([("a", 1.0), ("b", 1.0)])
    assert site._prog.mode == FULL
    site.set_active([("a", 0.0)])  # zero weight: left out
    assert site._prog.mode == BASE_ONLY
    with pytest.raises(RuntimeApplyError, match="did you mean 'a'"):
        site.set_active([("aa", 1.0)])
    with pytest.raises(RuntimeApplyError, match="already has a part"):
        site.add_part("a", "lora", {"rank": 2}, None)


def test_a_hook_on_the_base_sees_its_own_output():
    base = nn.Linear(8, 8)
    site = SiteModule.wrap(base)
    site.add_part("a", "lora", {"rank": 2}, None)
    with torch.no_grad():
        site.parts["a"].lora_B.fill_(1.0)
    site.set_active([("a", 1.0)])
    seen = []
    base.register_forward_hook(lambda module, args, output: seen.append(output))
    x = torch.randn(3, 8)
    y = site(x)
    # The LoRA sum is not written into the tensor the hook kept.
    torch.testing.assert_close(seen[0], nn.functional.linear(x, base.weight, base.bias), atol=0, rtol=0)
    assert not torch.allclose(y, seen[0])


def test_state_dict_keeps_the_base_keys(rt):
    model = rt.tiny_llama()
    original = model.state_dict()
    for path in (Q.format(0), MLP.format(1)):
        site = wrap_path(model, path)
        kind = "lora" if path.endswith("proj") else "adapter"
        site.add_part("d", kind, lora_site(path) if kind == "lora" else {"dim": 32, "size": 4}, None)
    adapted = model.state_dict()
    extra = [k for k in adapted if k not in original]
    # The original keys, in their order; the parts' keys come right after their module's.
    assert [k for k in adapted if k in original] == list(original)
    assert extra[:2] == [f"{Q.format(0)}.parts.d.lora_A", f"{Q.format(0)}.parts.d.lora_B"]
    assert list(adapted).index(extra[0]) == list(adapted).index(f"{Q.format(0)}.weight") + 1
    # Original checkpoints load into the adapted model and back.
    result = model.load_state_dict(original, strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(extra)
    fresh = rt.tiny_llama(seed=1)
    result = fresh.load_state_dict(adapted, strict=False)
    assert sorted(result.unexpected_keys) == sorted(extra) and not result.missing_keys
    for key in original:
        assert torch.equal(fresh.state_dict()[key], original[key])


def build_llama_with_sites(rt):
    """A tiny Llama with LoRA on q/v, DoRA on v of layer 1, IA3 on k, an adapter after the MLP, by hand."""
    model = rt.tiny_llama()
    for i in range(2):
        for path, kind, site in [
            (Q.format(i), "lora", lora_site(Q.format(i), dropout=0.1)),
            (V.format(i), "lora", lora_site(V.format(i), out_features=16, variant="dora" if i else "lora")),
            (K.format(i), "ia3", {"out_features": 16}),
            (MLP.format(i), "adapter", {"placement": "after", "dim": 32, "size": 8, "act": "silu"}),
        ]:
            s = wrap_path(model, path)
            s.add_part("d", kind, site, torch.Generator().manual_seed(i))
            s.set_active([("d", 1.0)])
    perturb(model)
    return model


def grads_of(model: nn.Module, batch: dict, checkpointing: bool) -> dict[str, torch.Tensor]:
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(rt):
    batch = rt.lm_batch()
    plain = grads_of(build_llama_with_sites(rt), batch, checkpointing=False)
    model = build_llama_with_sites(rt)
    checkpointed = grads_of(model, batch, checkpointing=True)
    assert model.model.layers[0].gradient_checkpointing
    assert set(checkpointed) == set(plain)
    # Every B and up-projection (the factors that start at zero) got a gradient.
    names = {id(p): n for n, p in model.named_parameters()}
    started_at_zero = [part.lora_B if part.kind == "lora" else part.up.weight
                       for m in model.modules() if isinstance(m, SiteModule)
                       for part in m.parts.values() if part.kind in ("lora", "adapter")]
    assert len(started_at_zero) == 6 and all(names[id(p)] in plain for p in started_at_zero)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_no_grad_deepcopy_and_dtype_conversion(rt):
    model = build_llama_with_sites(rt)
    batch = rt.lm_batch()
    with torch.no_grad():
        logits = model(**batch).logits
    assert not logits.requires_grad
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(**batch).logits, logits, atol=0, rtol=0)
    site = twin.model.layers[0].self_attn.q_proj
    assert site._prog.groups[0].As[0] is site.parts["d"].lora_A  # the copy runs its own parameters
    twin.to(torch.float64)
    torch.testing.assert_close(twin(**batch).logits.float(), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merging", [False, True])
def test_apply_use_merge_and_remove_through_the_transaction(merging, rt):
    model = rt.tiny_llama()
    batch = rt.lm_batch()
    before = rt.capture_state(model)
    base_logits = model(**batch).logits
    adapted = Adapted(model, None, patch_model(model, mixed_plan()))
    adapted.use("one")
    torch.testing.assert_close(adapted(**batch).logits, base_logits, atol=1e-6, rtol=0)  # fresh deltas
    perturb(model)
    for task, trainable in [("one", {"attn", "ad"}), ("two", {"ia", "sp"}), ("none", set())]:
        adapted.use(task)
        unmerged = adapted(**batch).logits
        names = {n for n, _ in adapted.trainable_parameters()}
        assert {n.split(".parts.")[1].split(".")[0] for n in names} == trainable
        if merging:
            report = adapted.merge()
            assert set(report["not_merged"]) == ({MLP.format(0), MLP.format(1)} if task == "one" else set())
            torch.testing.assert_close(adapted(**batch).logits, unmerged, atol=1e-5, rtol=1e-5)
            adapted.unmerge()
    adapted.remove()
    rt.assert_same_state(model, before)  # merged or not: merging kept the originals


def test_a_failing_add_rolls_back(rt):
    model = rt.tiny_llama()
    before = rt.capture_state(model)
    plan = mixed_plan()
    plan["deltas"]["bad"] = {"kind": "lora", "sites": [lora_site("model.norm")]}
    with pytest.raises(RuntimeApplyError, match="model.norm"):
        patch_model(model, plan)
    rt.assert_same_state(model, before)
