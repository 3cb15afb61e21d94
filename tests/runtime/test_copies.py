"""Copies of an adapted model: ``copy.deepcopy`` of the handle or the model, pickle, ``torch.save``.

A copy must be an independent handle on an independent model: its
``remove()``, training, task switches and ``.to()`` leave the original (its
outputs, its parameters, its own ``use``/``remove``) exactly as they were.
Every delta kind is covered, quantized bases too, merged and unmerged.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import adaptlang
from adaptlang.errors import UsageError
from adaptlang.runtime.quant import FLOAT_BITS
from adaptlang.runtime.site import SiteModule
from tests.runtime.adapted_support import logits, randomize, tiny_llama

Q0 = "model.layers.0.self_attn.q_proj"
OTHER = """
lora other {
    on   layers[*].self_attn.v_proj
    rank 2
}
task main  = d
task other = other
"""
LORA_Q = "lora d {\n    on layers[*].self_attn.q_proj\n    rank 4\n}\n"
QUANT = "quantize {fmt} {{\n    on layers[*].self_attn.q_proj\n    block 16\n}}\n"
#: kind -> (the delta ``d`` of task ``main``, apply(..., keep_base=)).
KINDS = {
    "lora": (LORA_Q, False),
    "dora": ("lora d {\n    on layers[*].self_attn.q_proj\n    variant dora\n    rank 4\n}\n", False),
    "ia3": ("ia3 d {\n    on layers[*].self_attn.k_proj\n}\n", False),
    "adapter": ("adapter d {\n    after layers[*].mlp\n    size 4\n}\n", False),
    "prompt": ("prompt d {\n    tokens 3\n    init random\n}\n", False),
    "tune": ("tune d {\n    params lm_head.weight\n}\n", False),
    "sparse": ("sparse d {\n    on layers[0].mlp.up_proj\n    density 10%\n    select random\n}\n", False),
    "nf4": (QUANT.format(fmt="nf4") + LORA_Q, True),
    "int8": (QUANT.format(fmt="int8") + LORA_Q, True),
    "nf4-released": (QUANT.format(fmt="nf4") + LORA_Q, False),  # remove() gives dequantized values
}
QUANTIZED = {"nf4", "int8", "nf4-released"}


def make(kind: str, model=None):
    """Applies ``kind``'s spec to a seeded tiny Llama, with random delta values."""
    body, keep = KINDS[kind]
    adapted = adaptlang.apply(model if model is not None else tiny_llama(), "adaptlang 1\n" + body + OTHER,
                              task="main", keep_base=keep)
    randomize(adapted, "d", "other")
    return adapted


def tensors_of(adapted) -> list[torch.Tensor]:
    """Every tensor an adapted model holds: state dict, delta parameters, tune originals."""
    found = list(adapted.model.state_dict().values())
    for delta in ("d", "other"):
        found += list(adapted.delta_parameters(delta).values())
    return found + list(adapted._patch.tune.originals.values())


def storages(adapted) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors_of(adapted) if t.numel()}


def mixed_rows(kind: str) -> list[str]:
    # A re-trained lm_head is one tensor per batch: rows of a tune task only mix with the same task.
    return ["main", "main"] if kind == "tune" else ["main", "other"]


def check_mixed(adapted, batch, rows) -> None:
    """A mixed-task call gives each row its task's output (last L positions: prompts prepend)."""
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        mixed = adapted(**batch, tasks=rows).logits
    for r, task in enumerate(rows):
        with adapted.use(task):
            alone = logits(adapted, batch)
        torch.testing.assert_close(mixed[r, -length:], alone[r, -length:], atol=1e-5, rtol=1e-5)


def check_removed(model, before, kind: str, merged: tuple[str, ...], rt) -> None:
    """After remove(): exactly the model before apply.

    Where remove() is not bit-exact by design (a quantized base without
    ``keep_base``: dequantized values; a merge: unmerged within rounding), the
    values must be those of an uncopied twin taken through the same steps.
    """
    if kind != "nf4-released" and not merged:
        rt.assert_same_state(model, before)
        return
    twin = make(kind)
    for step in merged:  # the handle calls the original went through
        getattr(twin, step.split(":")[0])(*step.split(":")[1:])
    expected = twin.remove().state_dict()
    after = rt.capture_state(model)
    assert all(after.params[n] is p for n, p in before.params.items())
    assert list(after.values) == list(expected)
    for key, value in after.values.items():
        assert torch.equal(value, expected[key]), key
    if kind != "nf4-released":  # a merge changes values by rounding only
        for key, value in before.values.items():
            torch.testing.assert_close(after.values[key], value, atol=1e-6, rtol=0)


def prepared(kind, rt):
    """``(model, its pre-apply state, adapted with kind's tasks, batch, main's logits, other's logits)``."""
    model = tiny_llama()
    before = rt.capture_state(model)
    adapted = make(kind, model)
    batch = rt.lm_batch()
    ref_main = logits(adapted, batch)
    with adapted.use("other"):
        ref_other = logits(adapted, batch)
    return model, before, adapted, batch, ref_main, ref_other


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_copied_handle_is_independent(kind, merged, rt, tmp_path):
    model, before, adapted, batch, ref_main, ref_other = prepared(kind, rt)
    if merged:
        adapted.merge()
    now = logits(adapted, batch)

    ad2 = copy.deepcopy(adapted)
    assert ad2.model is not model and adaptlang.handle(ad2.model) is ad2 and adaptlang.handle(model) is adapted
    assert ad2.plan is adapted.plan and ad2.merged == merged and ad2.active_task == "main"
    assert not storages(ad2) & storages(adapted)
    assert torch.equal(logits(ad2, batch), now)
    frozen = [t.clone() for t in tensors_of(adapted)]

    # Everything the copy's handle does acts on the copy only.
    ad2.use("main")  # unmerges the copy
    assert adapted.merged == merged and not ad2.merged
    names = {n for n, _ in ad2.trainable_parameters()}
    assert names and all(".parts.d." in n or "adaptlang_prompts.d" in n or n == "lm_head.weight" for n in names)
    trained = {n: p.detach().clone() for n, p in ad2.trainable_parameters()}
    ad2(**batch).loss.backward()
    with torch.no_grad():
        for _, p in ad2.trainable_parameters():
            p -= 0.1 * p.grad
    assert all(not torch.equal(p, trained[n]) for n, p in ad2.trainable_parameters())
    assert all(p.grad is None for p in model.parameters())
    copy_state = ad2.adapter_state_dict("main")
    assert set(copy_state) == set(adapted.adapter_state_dict("main"))
    saved = ad2.save(tmp_path, tasks=["main"])
    loaded = adaptlang.load(tiny_llama(), saved, keep_base=KINDS[kind][1])
    torch.testing.assert_close(logits(loaded, batch), logits(ad2, batch), atol=1e-6, rtol=1e-6)
    check_mixed(ad2, batch, mixed_rows(kind))
    ad2.merge()
    ad2.unmerge()
    ad2.use("other")
    assert ad2.remove() is ad2.model
    assert not any(isinstance(m, SiteModule) for m in ad2.model.modules())

    # The original is untouched and fully working.
    assert all(torch.equal(a, b) for a, b in zip(tensors_of(adapted), frozen))
    assert isinstance(model.get_submodule(Q0), SiteModule) or kind in ("ia3", "adapter", "prompt", "tune",
                                                                         "sparse")
    assert adaptlang.handle(model) is adapted and adapted.merged == merged
    assert torch.equal(logits(adapted, batch), now)
    if not merged:  # a merged model refuses mixed batches
        check_mixed(adapted, batch, mixed_rows(kind))
    adapted.use("other")
    torch.testing.assert_close(logits(adapted, batch), ref_other, atol=1e-5, rtol=1e-5)
    adapted.use("main")
    torch.testing.assert_close(logits(adapted, batch), ref_main, atol=1e-5, rtol=1e-5)
    adapted.remove()
    check_removed(model, before, kind, ("merge", "use:other", "use:main") if merged else (), rt)
    with pytest.raises(UsageError, match="LlamaForCausalLM carries no adaptlang patches"):
        adaptlang.handle(model)


def pickled(model):
    return pickle.loads(pickle.dumps(model))


def torch_saved(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("how", [copy.deepcopy, pickled, torch_saved], ids=["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_copied_model_carries_its_own_handle(kind, how, merged, rt):
    model, before, adapted, batch, ref_main, ref_other = prepared(kind, rt)
    active = "main" if merged else "other"  # the copy keeps the active task (merged: main's deltas fold in)
    adapted.use(active)
    if merged:
        adapted.merge()
    now = logits(adapted, batch)

    twin = how(model)
    handle = adaptlang.handle(twin)
    assert handle is not adapted and handle.model is twin and handle.active_task == active
    assert handle.merged == merged
    assert {n for n, _ in handle.trainable_parameters()} == {n for n, _ in adapted.trainable_parameters()}
    assert not storages(handle) & storages(adapted)
    assert torch.equal(logits(handle, batch), now)
    handle.use("main")
    torch.testing.assert_close(logits(handle, batch), ref_main, atol=1e-5, rtol=1e-5)
    handle.use("other")
    torch.testing.assert_close(logits(handle, batch), ref_other, atol=1e-5, rtol=1e-5)
    handle.remove()
    plain = rt.capture_state(twin)
    assert not any(isinstance(m, SiteModule) for m in plain.modules.values())
    assert all("adaptlang" not in name for name in plain.modules)
    assert list(plain.values) == list(before.values)

    assert torch.equal(logits(adapted, batch), now)
    adapted.use("main")
    torch.testing.assert_close(logits(adapted, batch), ref_main, atol=1e-5, rtol=1e-5)
    adapted.remove()
    check_removed(model, before, kind, ("merge", "use:main") if merged else (), rt)


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_float64_after_a_copy(kind, rt):
    adapted = make(kind)
    batch = rt.lm_batch()
    ref32 = logits(adapted, batch)
    if kind in QUANTIZED:
        # Quantized storage is built from float32 weights: the reference is an uncopied twin moved to float64.
        reference = make(kind)
        reference.model.to(torch.float64)
    else:  # an independent reference: the model in float64 before apply, the same delta values
        reference = make(kind, tiny_llama().to(torch.float64))
    ref_main = logits(reference, batch)
    with reference.use("other"):
        ref_other = logits(reference, batch)

    ad2 = copy.deepcopy(adapted)
    ad2.model.to(torch.float64)
    for task, expected in (("other", ref_other), ("main", ref_main), ("other", ref_other), ("main", ref_main)):
        ad2.use(task)
        out = logits(ad2, batch)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        assert_all_float64(ad2)
    ad2.remove()
    assert_all_float64(ad2)
    assert all(t.dtype == torch.float32 for t in adapted.model.state_dict().values() if t.is_floating_point())
    assert torch.equal(logits(adapted, batch), ref32)


def assert_all_float64(adapted) -> None:
    """No float32 tensor anywhere in the model, nor waiting outside it (tune slots).

    Except the scales of quantized storage: they are part of the format and stay
    fp32 whatever the model's dtype (integer-held, as bitsandbytes keeps them;
    ``runtime.quant.QuantizedWeight``); the weight they stand for does follow.
    """
    found = list(adapted.model.state_dict().items())
    if not adapted._removed:
        found += [(f"tune original {k}", t) for k, t in adapted._patch.tune.originals.items()]
    scales = tuple(f".quant.{name}" for name in FLOAT_BITS)
    odd = [name for name, t in found if t.is_floating_point() and t.dtype != torch.float64
           and not (name.endswith(scales) and t.dtype == torch.float32)]
    assert not odd, odd
    for site in adapted.model.modules():
        if getattr(site, "quant", None) is not None:
            assert site.quant.dtype == site.quant.dequantize().dtype == torch.float64


def test_remove_after_to_keeps_the_conversion(rt):
    # Without any copy: remove() after .to() must not put the pre-.to() storage back.
    model = tiny_llama()
    pristine = copy.deepcopy(model)
    adapted = make("lora", model)
    model.to(torch.float64)
    adapted.remove()
    expected = pristine.to(torch.float64).state_dict()
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float64 and torch.equal(value, expected[key]), key


def test_shallow_copies_and_unadapted_models_are_refused(rt):
    adapted = make("lora")
    with pytest.raises(UsageError, match="copy.copy.* second handle on the same model"):
        copy.copy(adapted)
    with pytest.raises(UsageError, match="carries no adaptlang patches"):
        adaptlang.handle(adapted.model.model)  # a submodule
    with pytest.raises(UsageError, match="expected the adapted model"):
        adaptlang.handle(adapted)
    removed = copy.deepcopy(adapted)
    removed.remove()
    with pytest.raises(UsageError, match="carries no adaptlang patches"):
        adaptlang.handle(removed.model)
    assert adaptlang.handle(adapted.model) is adapted
    with pytest.raises(adaptlang.AdaptError, match="already adapted"):
        adaptlang.apply(copy.deepcopy(make("tune").model), "adaptlang 1\n" + LORA_Q + "task t = d\n")
