"""Mixed-task batches: ``adapted(**inputs, tasks=[...])``, each row equal to that row run alone under its task.

The reference for every row is the same row run alone (a batch of one)
under ``adapted.use(task)``, or through an untouched copy of the model for
``None``; with prompts, on the row's real (non-prompt) positions. Specs use
roles so one spec runs on tiny-llama (Linear) and tiny-gpt2 (Conv1D).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adaptlang
from adaptlang.errors import RuntimeApplyError, UsageError

SPEC = """adaptlang 1
lora l1 {
    on   @layers[*].@o
    rank 4
}
lora l2 {
    on    @layers[*].@up
    rank  2
    alpha 4
}
lora l3 {
    on      @layers[*].@o
    rank    2
    variant rslora
}
lora dora {
    on      @layers[*].@down
    rank    2
    variant dora
}
ia3 ia {
    on @layers[*].@down
}
ia3 iaff {
    on          @layers[*].@down
    feedforward true
}
adapter after_mlp {
    after @layers[*].@mlp
    size  4
    act   gelu
}
adapter before_attn {
    before @layers[*].@attn
    size   4
}
adapter par {
    parallel @layers[*].@o
    size     4
}
prompt p1 {
    tokens 3
    init   random
}
prompt p2 {
    tokens 5
    init   random
}
sparse sp {
    on      @layers[0].@up
    density 10%
    select  random
}
tune head {
    params @head.weight
}
task lora       = l1
task rslora     = l3
task dora_t     = dora
task ia3_t      = ia + iaff
task after_t    = after_mlp
task before_t   = before_attn
task parallel_t = par
task prompt_a   = l2 + p1
task prompt_b   = p2
task sparse_t   = sp
task stacked    = l1 + l2 + l3
task weighted   = 0.5 * l1 + 1.5 * l3 + 0.7 * ia + 2 * after_mlp
task tuned      = l1 + head
task tuned_too  = l3 + head
"""

#: Every mixable task, one per kind of delta or composition.
KINDS = ["lora", "rslora", "dora_t", "ia3_t", "after_t", "before_t", "parallel_t", "prompt_a", "prompt_b",
         "sparse_t", "stacked", "weighted"]
PROMPT_TOKENS = {"prompt_a": 3, "prompt_b": 5}


@pytest.fixture(params=["llama", "gpt2"])
def setup(request, rt):
    """``(adapted, untouched copy of the model, batch)`` with every delta randomised."""
    model = rt.tiny_llama() if request.param == "llama" else rt.tiny_gpt2()
    reference = copy.deepcopy(model)
    adapted = adaptlang.apply(model, SPEC, task="lora")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for delta in adapted._patch.delta_params:
            for p in adapted.delta_parameters(delta).values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)  # B, up, IA3, sparse values: nonzero
    return adapted, reference, rt


def alone(adapted, reference, batch: dict, r: int, task: str | None) -> torch.Tensor:
    """Row ``r`` run alone under ``task``: its logits on the real positions, (1, L, V)."""
    row = {k: v[r:r + 1] for k, v in batch.items()}
    with torch.no_grad():
        if task is None:
            return reference(**row).logits
        with adapted.use(task):
            out = adapted(**row).logits
    return out[:, PROMPT_TOKENS.get(task, 0):]


def assert_rows_alone(adapted, reference, batch: dict, tasks: list) -> None:
    """Runs the mixed batch and compares every row with that row alone (atol 1e-5)."""
    with torch.no_grad():
        mixed = adapted(**batch, tasks=tasks).logits
    length = batch["input_ids"].shape[1]
    for r, task in enumerate(tasks):
        expected = alone(adapted, reference, batch, r, task)
        torch.testing.assert_close(mixed[r:r + 1, -length:], expected, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"row {r} ({task}): {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_each_row_equals_its_task_alone(setup, kind):
    adapted, reference, rt = setup
    tasks = [kind, None, "lora", kind, "stacked"]
    batch = rt.lm_batch(batch=len(tasks))  # row 0 is left-padded: alone it is too
    assert_rows_alone(adapted, reference, batch, tasks)


def test_every_kind_in_one_batch(setup):
    adapted, reference, rt = setup
    tasks = KINDS + [None] + KINDS[::-1]
    batch = rt.lm_batch(batch=len(tasks), length=6)
    assert_rows_alone(adapted, reference, batch, tasks)


def test_all_rows_base_and_all_rows_one_task(setup):
    adapted, reference, rt = setup
    batch = rt.lm_batch(batch=3)
    assert_rows_alone(adapted, reference, batch, [None, None, None])
    assert_rows_alone(adapted, reference, batch, ["prompt_b"] * 3)


def test_tasks_sharing_a_tune_delta_mix(setup):
    adapted, reference, rt = setup
    batch = rt.lm_batch(batch=3)
    assert_rows_alone(adapted, reference, batch, ["tuned", "tuned_too", "tuned"])


def test_the_active_task_comes_back(setup):
    adapted, _, rt = setup
    batch = rt.lm_batch(batch=2)
    adapted.use("prompt_a")
    flags = {n: p.requires_grad for n, p in adapted.model.named_parameters()}
    with torch.no_grad():
        before = adapted(**batch).logits
        adapted(**batch, tasks=["weighted", "prompt_b"])
        with pytest.raises(Exception):
            adapted(input_ids=batch["input_ids"] + 1000, tasks=["sparse_t", "prompt_b"])  # ids out of range
        after = adapted(**batch).logits
    assert adapted.active_task == "prompt_a"
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert {n: p.requires_grad for n, p in adapted.model.named_parameters()} == flags
    assert all(site._rows is None for site in adapted._patch.sites.values())
    assert adapted._patch.prompts.rows is None


def test_gradients_reach_the_active_task_through_a_mixed_batch(setup):
    adapted, _, rt = setup
    batch = rt.lm_batch(batch=2)
    adapted.use("stacked")
    out = adapted(**batch, tasks=["stacked", "lora"])
    out.loss.backward()
    grads = [p.grad for _, p in adapted.trainable_parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


class MatmulCounter(TorchDispatchMode):
    """Counts matrix products run under it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_products_do_not_grow_with_the_number_of_tasks(rt):
    # K tasks of one LoRA each at the same sites, rows round-robin: one batched product per site.
    deltas = "".join(f"lora t{k} {{\n    on @layers[*].@o\n    rank 2\n}}\ntask k{k} = t{k}\n" for k in range(4))
    adapted = adaptlang.apply(rt.tiny_llama(), "adaptlang 1\n" + deltas)
    batch = rt.lm_batch(batch=8)
    counts = []
    for k in (2, 4):
        with torch.no_grad(), MatmulCounter() as counter:
            adapted(**batch, tasks=[f"k{r % k}" for r in range(8)])
        counts.append(counter.count)
    assert counts[0] == counts[1]


def test_errors_name_the_problem(setup):
    adapted, _, rt = setup
    batch = rt.lm_batch(batch=2)
    with pytest.raises(RuntimeApplyError, match="did you mean 'stacked'"):
        adapted(**batch, tasks=["stackd", None])
    with pytest.raises(UsageError, match="tasks names 3 rows; the batch has 2"):
        adapted(**batch, tasks=["lora", None, None])
    with pytest.raises(UsageError, match="one task name"):
        adapted(**batch, tasks="lora")
    with pytest.raises(RuntimeApplyError, match="task 'tuned' re-trains existing parameters"):
        adapted(**batch, tasks=["tuned", "lora"])
    with pytest.raises(RuntimeApplyError, match="re-trains existing parameters"):
        adapted(**batch, tasks=[None, "tuned"])
    adapted.merge()
    with pytest.raises(RuntimeApplyError, match="unmerge"):
        adapted(**batch, tasks=["lora", None])
    adapted.unmerge()
    assert adapted.active_task == "lora"


def test_dora_with_sparse_at_one_site_rows_equal_each_task_alone(rt):
    """DoRA normalises W plus the row's sparse deltas: rows whose sparse deltas differ must not share it.

    (Before: a row of ``d + s`` beside a base row was off by 0.31 in the logits.)
    """
    model = rt.tiny_llama()
    reference = copy.deepcopy(model)
    adapted = adaptlang.apply(model, """adaptlang 1
lora d  { on layers[*].self_attn.o_proj; rank 2; variant dora }
lora l  { on layers[*].self_attn.o_proj; rank 2 }
sparse s { on layers[*].self_attn.o_proj; density 10% }
task x = d + s
task y = 0.5 * d + l
task z = s
""", task="y")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for delta in adapted._patch.delta_params:
            for p in adapted.delta_parameters(delta).values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    batch = rt.lm_batch(batch=5)
    assert_rows_alone(adapted, reference, batch, ["x", None, "y", "x", "z"])
