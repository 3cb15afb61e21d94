"""Concurrent use of one adapted model: per-call ``tasks=`` from threads, ``use()`` beside forwards.

References are computed single-threaded first; then threads (made to overlap
with a barrier, seeded, bounded, joined with a timeout so that a deadlock
fails instead of hanging) compare every output with its reference. Outputs
are deterministic (one torch thread per op), so "equal" is within 1e-6.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

import adaptlang
from adaptlang.errors import AdaptError, RuntimeApplyError, UsageError
from tests.runtime.adapted_support import randomize

SPEC = """adaptlang 1
lora lq {
    on   @layers[*].@q
    rank 4
}
lora lv {
    on   @layers[*].@v
    rank 2
}
ia3 iv {
    on @layers[*].@down
}
adapter ad {
    after @layers[*].@mlp
    size  4
}
prompt pr {
    tokens 3
    init   random
}
tune head {
    params @head.weight
}
task a     = lq + lv
task b     = iv + ad
task c     = lq + pr
task tuned = lv + head
"""

#: Per-call task lists the threads draw from (a batch of two rows).
LISTS = [("a", "b"), ("b", "c"), ("c", None), ("a", "a"), (None, "b"), ("c", "c"), ("b", "a")]
PLAIN = ("a", "b", "c")
TIMEOUT = 120.0


@pytest.fixture
def served(rt):
    """``(adapted with task 'a' active, batch)``; every delta randomised so every task differs."""
    adapted = adaptlang.apply(rt.tiny_llama(), SPEC, task="a")
    randomize(adapted, *adapted._patch.delta_params)
    return adapted, rt.lm_batch(batch=2, length=6)


def logits(adapted, batch: dict, tasks=None) -> torch.Tensor:
    with torch.no_grad():
        if tasks is None:
            return adapted(**batch).logits
        return adapted(**batch, tasks=list(tasks)).logits


def per_call_refs(adapted, batch: dict, lists=LISTS) -> dict:
    return {tasks: logits(adapted, batch, tasks) for tasks in lists}


def plain_refs(adapted, batch: dict) -> dict:
    refs = {}
    for task in PLAIN:
        with adapted.use(task):
            refs[task] = logits(adapted, batch)
    return refs


def same(out: torch.Tensor, ref: torch.Tensor) -> bool:
    return out.shape == ref.shape and bool((out - ref).abs().max() <= 1e-6)


def run_threads(workers: list, timeout: float = TIMEOUT) -> list[BaseException]:
    """Runs each callable in its own thread; returns what they raised; fails if one hangs."""
    errors: list[BaseException] = []

    def wrap(fn):
        def target():
            torch.set_num_threads(1)
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 (reported by the test)
                errors.append(exc)
        return target

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread is still running: deadlock?"
    return errors


class Tally:
    """Counts calls and wrong outputs across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = self.wrong = 0
        self.examples: list[str] = []

    def record(self, ok: bool, what: str) -> None:
        with self.lock:
            self.calls += 1
            if not ok:
                self.wrong += 1
                self.examples.append(what)

    def check(self) -> None:
        assert self.calls > 0
        assert self.wrong == 0, f"{self.wrong} of {self.calls} calls gave wrong outputs, e.g. {self.examples[:3]}"


def per_call_worker(adapted, batch, refs, tally, barrier, seed: int, calls: int, lists=LISTS):
    def work():
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(calls):
            tasks = rng.choice(lists)
            tally.record(same(logits(adapted, batch, tasks), refs[tasks]), f"tasks={tasks}")
    return work


def test_per_call_tasks_from_four_threads_match_their_references(served):
    adapted, batch = served
    refs = per_call_refs(adapted, batch)
    tally, barrier = Tally(), threading.Barrier(4, timeout=TIMEOUT)
    errors = run_threads([per_call_worker(adapted, batch, refs, tally, barrier, seed, 50) for seed in range(4)])
    assert not errors, errors
    tally.check()
    assert adapted.active_task == "a"
    assert all(site._rows is None for site in adapted._patch.sites.values())


def test_use_in_a_loop_beside_per_call_and_plain_forwards(served):
    adapted, batch = served
    refs, plain = per_call_refs(adapted, batch), plain_refs(adapted, batch)
    tally, barrier = Tally(), threading.Barrier(4, timeout=TIMEOUT)

    def switcher():
        rng = random.Random(11)
        barrier.wait()
        for _ in range(60):
            adapted.use(rng.choice(PLAIN))
            time.sleep(0)

    def plain_worker():
        barrier.wait()
        for _ in range(50):
            out = logits(adapted, batch)
            # Some task's output, never a mix of two.
            tally.record(any(same(out, ref) for ref in plain.values()), "plain forward")

    workers = [switcher, plain_worker] + [per_call_worker(adapted, batch, refs, tally, barrier, s, 40)
                                          for s in (1, 2)]
    errors = run_threads(workers)
    assert not errors, errors
    tally.check()
    final = adapted.active_task
    assert same(logits(adapted, batch), plain[final])


def test_per_call_with_other_tune_copies_runs_alone_beside_other_forwards(served):
    """A layout whose tune slots differ from the active task's is exclusive: correct, and nobody sees its slots."""
    adapted, batch = served
    lists = [("tuned", "tuned"), ("a", "b"), ("tuned", "tuned")]
    refs, plain_a = per_call_refs(adapted, batch, lists), logits(adapted, batch)
    tally, barrier = Tally(), threading.Barrier(3, timeout=TIMEOUT)

    def plain_worker():
        barrier.wait()
        for _ in range(40):
            tally.record(same(logits(adapted, batch), plain_a), "plain forward under 'a'")

    workers = [plain_worker] + [per_call_worker(adapted, batch, refs, tally, barrier, s, 30, lists) for s in (3, 4)]
    errors = run_threads(workers)
    assert not errors, errors
    tally.check()
    slot = adapted.model.lm_head._parameters["weight"]
    assert slot is adapted._patch.tune.originals[("lm_head", "weight")]


def test_use_waits_for_a_running_per_call_forward(served):
    adapted, batch = served
    tasks = ("b", "c")
    ref = per_call_refs(adapted, batch, [tasks])[tasks]
    entered, release = threading.Event(), threading.Event()
    outputs: dict = {}

    def hold(module, args, output):
        if threading.current_thread().name == "forward" and not entered.is_set():
            entered.set()
            release.wait(TIMEOUT)

    handle = adapted.model.model.layers[0].register_forward_hook(hold)
    forward = threading.Thread(target=lambda: outputs.update(out=logits(adapted, batch, tasks)), name="forward",
                               daemon=True)
    switch = threading.Thread(target=lambda: adapted.use("c"), daemon=True)
    try:
        forward.start()
        assert entered.wait(TIMEOUT)
        switch.start()
        time.sleep(0.3)
        assert switch.is_alive(), "use() did not wait for the running forward"
        assert adapted.active_task == "a"
    finally:
        release.set()
        forward.join(TIMEOUT)
        switch.join(TIMEOUT)
        handle.remove()
    assert not forward.is_alive() and not switch.is_alive()
    assert same(outputs["out"], ref)
    assert adapted.active_task == "c"


@pytest.mark.parametrize("call", ["per_call", "plain"])
@pytest.mark.parametrize("writer", ["use", "merge", "unmerge", "remove"])
def test_writers_from_inside_a_forward_raise_instead_of_deadlocking(served, call, writer):
    adapted, batch = served
    plain_a, refs = logits(adapted, batch), per_call_refs(adapted, batch, [("b", "a")])
    args = {"use": ("b",)}.get(writer, ())

    def switch(module, args_, output):
        getattr(adapted, writer)(*args)

    handle = adapted.model.model.layers[0].register_forward_hook(switch)
    caught: list = []

    def run():
        try:
            logits(adapted, batch, ("b", "a") if call == "per_call" else None)
        except AdaptError as exc:
            caught.append(exc)

    errors = run_threads([run], timeout=60)
    handle.remove()
    assert not errors, errors
    assert len(caught) == 1 and isinstance(caught[0], UsageError), caught
    assert "inside a forward" in str(caught[0]) and writer in str(caught[0])
    # Nothing changed, and the model still serves.
    assert adapted.active_task == "a" and not adapted.merged
    assert same(logits(adapted, batch), plain_a)
    assert same(logits(adapted, batch, ("b", "a")), refs[("b", "a")])


@pytest.mark.parametrize("outer", [None, ("b", "c"), ("tuned", "tuned")])
def test_a_forward_from_inside_a_forward(served, outer):
    """Forwards nest (no self-deadlock) and a nested plain call runs the active task, not the outer call's
    rows; inside a call that swapped tune slots (it runs alone) a nested call is refused instead."""
    adapted, batch = served
    plain_a = logits(adapted, batch)
    inner: list = []

    def again(module, args, output):
        if not inner:
            inner.append(None)  # before the inner call, whose hook runs too
            inner[0] = logits(adapted, batch)

    handle = adapted.model.model.layers[1].register_forward_hook(again)
    errors = run_threads([lambda: logits(adapted, batch, outer)], timeout=60)
    handle.remove()
    if outer is not None and "tuned" in outer:
        assert len(errors) == 1 and isinstance(errors[0], UsageError), errors
        assert "inside a forward" in str(errors[0])
    else:
        assert not errors, errors
        assert same(inner[0], plain_a)
    assert same(logits(adapted, batch), plain_a)


@pytest.mark.parametrize("task", [None, 5, ["a"]])
def test_use_of_a_non_name_is_a_usage_error(served, task):
    adapted, _ = served
    with pytest.raises(UsageError, match="task name"):
        adapted.use(task)
    assert adapted.active_task == "a"


def test_unknown_task_is_still_a_runtime_error(served):
    adapted, _ = served
    with pytest.raises(RuntimeApplyError, match="unknown task 'bb'"):
        adapted.use("bb")


@pytest.mark.parametrize("change", ["quantize", "merge"])
def test_cached_layouts_follow_a_site_whose_tensors_change(served, change):
    """A layout's programs are rebuilt when a site's tensors change (its epoch), never reused stale."""
    adapted, batch = served
    tasks = ["a", "b"]
    before = logits(adapted, batch, tasks)  # builds and caches the layout's programs
    site = adapted._patch.sites["model.layers.0.self_attn.q_proj"]  # task 'a' has LoRA here
    if change == "merge":
        site.merge()  # its weight now holds 'a': the per-row program must not run on it
        with pytest.raises(RuntimeApplyError, match="merged"):
            logits(adapted, batch, tasks)
        site.unmerge()
        assert (logits(adapted, batch, tasks) - before).abs().max() <= 1e-5
        return
    site.quantize("int8")
    out = logits(adapted, batch, tasks)
    assert (out - before).abs().max() > 1e-6  # quantization changed the outputs...
    for r, task in enumerate(tasks):
        with adapted.use(task):
            alone = logits(adapted, {k: v[r:r + 1] for k, v in batch.items()})
        assert (out[r:r + 1] - alone).abs().max() <= 1e-5, f"row {r} ({task})"  # ...as it does alone


def test_copies_made_while_a_tune_swapping_call_runs_hold_the_active_task(served):
    """``copy.deepcopy`` of the handle waits for running calls; a copy of the model puts the active task back.

    (Before: 8 of 15 copies held the serving call's tune copy in ``lm_head``, off by 6 in the logits.)
    """
    import copy

    adapted, batch = served
    reference = logits(adapted, batch)
    stop = threading.Event()
    copies: list = []

    def server():
        for _ in range(400):
            if stop.is_set():
                return
            logits(adapted, batch, ("tuned", "tuned"))

    def copier():
        for i in range(10):
            copies.append(copy.deepcopy(adapted) if i % 2 else adaptlang.handle(copy.deepcopy(adapted.model)))
        stop.set()

    errors = run_threads([server, copier])
    assert not errors, errors
    assert len(copies) == 10
    for i, handle in enumerate(copies):
        assert handle.active_task == "a"
        assert same(logits(handle, batch), reference), f"copy {i}"


def test_a_call_that_waited_while_the_handle_was_removed_fails(served):
    adapted, batch = served
    adapted.remove()
    with pytest.raises(RuntimeApplyError, match="removed"):
        adapted(**batch)


def test_mixed_tasks_with_gradient_checkpointing_are_refused_in_training(served):
    """The backward would recompute checkpointed layers under the active task (wrong gradients)."""
    adapted, batch = served
    adapted.model.gradient_checkpointing_enable()
    adapted.model.train()
    with pytest.raises(UsageError, match="gradient checkpointing"):
        adapted(**batch, tasks=["a", "b"])
    with torch.no_grad():  # serving is fine
        assert adapted(**batch, tasks=["a", "b"]).logits.shape[0] == 2
