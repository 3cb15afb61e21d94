"""``Adapted.parameters()``: the active task's trainable tensors, as an optimizer takes them.

The reference is ``trainable_parameters()`` (its pairs without the names)
and, independently, the model's own ``requires_grad`` flags in
``named_parameters()`` order.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adaptlang
from adaptlang.errors import RuntimeApplyError
from tests.runtime.adapted_support import tiny_llama

SPEC = """adaptlang 1
lora a {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
adapter c {
    after layers[*].mlp
    size  8
}
tune n {
    params norm.weight
}
task first  = a + c + n
task second = frozen(a) + c
"""


def test_parameters_are_the_trainable_tensors_in_model_order():
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPEC, task="first")
    for task in ("first", "second"):
        adapted.use(task)
        ours = list(adapted.parameters())
        assert ours, task
        assert [id(p) for p in ours] == [id(p) for _, p in adapted.trainable_parameters()]
        assert [id(p) for p in ours] == [id(p) for p in model.parameters() if p.requires_grad]
    # second: c only (a is frozen, n unused) -> adapter c on 2 layers: down 32x8 + 8, up 8x32 + 32
    assert sum(p.numel() for p in adapted.parameters()) == 2 * (32 * 8 + 8 + 8 * 32 + 32)


def test_an_iterator_keeps_the_task_it_was_made_for():
    adapted = adaptlang.apply(tiny_llama(), SPEC, task="first")
    handed_out = adapted.parameters()
    first = [id(p) for _, p in adapted.trainable_parameters()]
    adapted.use("second")
    assert [id(p) for p in handed_out] == first


def test_an_optimizer_built_from_parameters_trains_the_deltas_only():
    torch.manual_seed(0)
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPEC, task="first", seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(adapted.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (4, 9), generator=gen)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        logits = adapted(input_ids=ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_parameters_of_a_removed_handle_is_refused():
    adapted = adaptlang.apply(tiny_llama(), SPEC)
    adapted.remove()
    with pytest.raises(RuntimeApplyError):
        adapted.parameters()
