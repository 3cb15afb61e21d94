"""Partial fine-tuning / BitFit: per-delta copies swapped into parameter slots."""

from __future__ import annotations

import torch

import adaptlang

BITFIT = """adaptlang 1
tune bias {
    params **.bias
}
tune head {
    params lm_head.weight
}
tune head2 {
    params lm_head.weight
}
task bitfit = bias
task head   = head
task other  = head2
task both   = bias + frozen(head)
"""


def train_steps(adapted, batch, steps=3, lr=1e-2):
    """A few SGD steps on the active task's trainable parameters."""
    params = [p for _, p in adapted.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        adapted(**batch).loss.backward()
        opt.step()


def test_fresh_copies_change_nothing_and_base_stays_bit_identical(rt):
    model = rt.tiny_gpt2()
    batch = rt.lm_batch()
    base_out = model(**batch).logits
    base = rt.clone_params(model)
    # The base Parameter objects, taken before apply (while a task is active its slots hold copies).
    originals = {n: p for n, p in model.named_parameters() if n.endswith(".bias")}
    adapted = adaptlang.apply(model, BITFIT, task="bitfit")
    torch.testing.assert_close(adapted(**batch).logits, base_out, atol=0, rtol=0)
    names = [n for n, _ in adapted.trainable_parameters()]
    assert names and all(n.endswith(".bias") for n in names)
    assert sum(p.numel() for _, p in adapted.trainable_parameters()) == adapted.plan.to_dict()["tasks"][
        "bitfit"]["trainable_params"]
    assert all(dict(model.named_parameters())[n] is not p for n, p in originals.items())
    train_steps(adapted, batch)
    assert adapted.delta_parameters("bias")  # copies trained...
    trained = {n: p.detach().clone() for n, p in adapted.trainable_parameters()}
    assert any(not torch.equal(trained[n], base[n]) for n in trained)
    for name, original in originals.items():  # ...while the base Parameters did not move
        assert torch.equal(original.detach(), base[name])
    adapted.use("head")
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert p is originals[name] and torch.equal(p.detach(), base[name])


def test_each_delta_owns_its_copy_and_switching_swaps_it_in(rt):
    model = rt.tiny_gpt2()
    batch = rt.lm_batch()
    original = model.lm_head.weight
    adapted = adaptlang.apply(model, BITFIT, task="head")
    head_copy = model.lm_head.weight
    assert head_copy is not original and torch.equal(head_copy, original)
    train_steps(adapted, batch)
    adapted.use("other")
    other_copy = model.lm_head.weight
    assert other_copy is not head_copy and torch.equal(other_copy, original)
    adapted.use("bitfit")
    assert model.lm_head.weight is original
    adapted.use("both")  # frozen(head) reuses head's trained copy, not trainable here
    assert model.lm_head.weight is head_copy and not head_copy.requires_grad
    assert all(n.endswith(".bias") for n, _ in adapted.trainable_parameters())


def test_remove_restores_objects_and_tied_weights(rt):
    model = rt.tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    before = rt.capture_state(model)
    adapted = adaptlang.apply(model, BITFIT, task="head")
    train_steps(adapted, rt.lm_batch())
    adapted.use("bitfit")
    train_steps(adapted, rt.lm_batch())
    adapted.use("head")
    adapted.remove()
    assert model.lm_head.weight is model.transformer.wte.weight
    rt.assert_same_state(model, before)


def test_state_dict_round_trip_of_tune_copies(rt):
    model = rt.tiny_gpt2()
    adapted = adaptlang.apply(model, BITFIT, task="head")
    state = adapted.adapter_state_dict()
    assert list(state) == ["head/lm_head/weight"]
    new = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    adapted.load_adapter_state_dict(new)
    assert torch.equal(model.lm_head.weight.detach(), new["head/lm_head/weight"])
    adapted.use("bitfit")
    assert not torch.equal(model.lm_head.weight.detach(), new["head/lm_head/weight"])
