"""The ``Adapted`` handle end to end: inputs, task switching, weights, cost of inactive deltas, plain modules.

Everything goes through the public API (``adaptlang.apply`` and the
handle's methods) on tiny random models. Merging, removal and failed
applies are in ``test_adapted_lifecycle.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adaptlang
from adaptlang.errors import RuntimeApplyError
from tests.runtime.adapted_support import logits, randomize, tiny_llama

SPECS = Path(__file__).resolve().parents[2] / "specs"
Q0 = "model.layers.0.self_attn.q_proj"

TWO_TASKS = """adaptlang 1
lora a {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
lora b {
    on   layers[*].self_attn.q_proj
    rank 2
}
adapter c {
    after layers[*].mlp
    size  8
}
task first  = a + c
task second = b
task half   = 0.5 * a
task only_a = a
"""

ONLY_A = """adaptlang 1
lora a {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
task first = a
"""

# ------------------------------------------------------------------ inputs
def test_path_text_spec_and_plan_give_the_same_adaptation(rt):
    batch = rt.lm_batch()
    text = (SPECS / "lora.adapt").read_text()
    initial, results = [], []
    for make_input in (lambda m: SPECS / "lora.adapt", lambda m: str(SPECS / "lora.adapt"), lambda m: text,
                       lambda m: adaptlang.parse(SPECS / "lora.adapt"),
                       lambda m: adaptlang.compile(SPECS / "lora.adapt", m)):
        model = tiny_llama()
        adapted = adaptlang.apply(model, make_input(model))
        assert adapted.model is model and adapted.tasks == ["default"] and adapted.active_task == "default"
        initial.append({k: p.detach().clone() for k, p in adapted.delta_parameters("qv").items()})
        randomize(adapted, "qv", seed=1)
        results.append(logits(adapted, batch))
    # Same sites, same seeded initial values, same forward.
    for values, out in zip(initial[1:], results[1:]):
        assert values.keys() == initial[0].keys()
        assert all(torch.equal(values[k], initial[0][k]) for k in values)
        assert torch.equal(out, results[0])


def test_a_plan_for_another_model_is_refused_and_nothing_changes(rt):
    plan = adaptlang.compile(SPECS / "lora.adapt", "tiny-llama")
    model = tiny_llama()
    model.model.layers = model.model.layers[:1]  # the same classes, one layer fewer
    before = rt.capture_state(model)
    with pytest.raises(RuntimeApplyError, match="fingerprint"):
        adaptlang.apply(model, plan)
    rt.assert_same_state(model, before)


def test_applying_twice_is_refused(rt):
    model = tiny_llama()
    adaptlang.apply(model, SPECS / "lora.adapt")
    with pytest.raises(RuntimeApplyError, match="already adapted"):
        adaptlang.apply(model, SPECS / "lora.adapt")


def test_summary_is_the_table_adaptc_compile_prints(rt, tmp_path):
    from typer.testing import CliRunner

    from adaptlang.cli.main import app

    adapted = adaptlang.apply(tiny_llama(), SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    printed = CliRunner().invoke(app, ["compile", str(SPECS / "multitask.adapt"), "--model", "tiny-llama"])
    assert printed.exit_code == 0, printed.output
    ours = adapted.summary()
    # The header names the model as given (a preset name vs the class) and so the plan hash; the tables agree.
    table = ours[ours.index("\ndelta "):].strip()
    assert table in printed.output
    for task, trainable in [("sentiment", "10,176"), ("qa", "20,224"), ("both", "28,608"), ("qa_v2", "2,688")]:
        row = next(line for line in table.splitlines() if line.startswith(task + " "))
        assert trainable in row


# --------------------------------------------------------------- switching
def test_use_switches_trainability_and_restores_as_a_context_manager(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, TWO_TASKS, task="first")
    assert adapted.tasks == ["first", "second", "half", "only_a"]

    owner = {id(p): delta for delta in ("a", "b", "c") for p in adapted.delta_parameters(delta).values()}

    def trainable_deltas() -> set[str]:
        """The deltas whose parameters train now (checked against ``requires_grad`` on the whole model)."""
        flagged = {id(p) for p in model.parameters() if p.requires_grad}
        assert flagged == {id(p) for _, p in adapted.trainable_parameters()}
        return {owner[i] for i in flagged}

    assert trainable_deltas() == {"a", "c"}
    for name, param in adapted.trainable_parameters():
        assert model.get_parameter(name) is param
    with adapted.use("second") as same:
        assert same is adapted and adapted.active_task == "second"
        assert trainable_deltas() == {"b"}
        with adapted.use("half"):
            assert trainable_deltas() == {"a"}
        assert adapted.active_task == "second"
    assert adapted.active_task == "first" and trainable_deltas() == {"a", "c"}
    # A plain call switches for good.
    adapted.use("second")
    assert adapted.active_task == "second"


def test_context_manager_restores_the_task_after_an_error():
    adapted = adaptlang.apply(tiny_llama(), TWO_TASKS, task="first")
    with pytest.raises(ZeroDivisionError):
        with adapted.use("second"):
            1 / 0
    assert adapted.active_task == "first"


def test_unknown_task_suggests_the_nearest(rt):
    model = tiny_llama()
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, TWO_TASKS, task="frist")
    assert "did you mean 'first'" in str(info.value)
    adapted = adaptlang.apply(model, TWO_TASKS)
    with pytest.raises(RuntimeApplyError) as info:
        adapted.use("secnd")
    assert "unknown task 'secnd'" in str(info.value) and "did you mean 'second'" in str(info.value)
    assert adapted.active_task == "first"


def site_delta(model: nn.Module, adapted, task: str, ids: torch.Tensor) -> torch.Tensor:
    """What the deltas add at layer 0's q_proj under ``task``: site output minus the base's, same input."""
    site = model.get_submodule(Q0)
    seen = {}
    handle = site.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    try:
        with adapted.use(task), torch.no_grad():
            model(input_ids=ids)
            return seen["y"] - site.base(seen["x"])
    finally:
        handle.remove()


def test_a_weight_scales_the_lora_contribution(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, TWO_TASKS)
    randomize(adapted, "a")
    ids = rt.lm_batch()["input_ids"]
    # Layer 0's input does not depend on any delta, so the site sees the same x under both tasks.
    full = site_delta(model, adapted, "first", ids)
    half = site_delta(model, adapted, "half", ids)
    assert full.abs().max() > 1e-2
    torch.testing.assert_close(half, 0.5 * full, atol=1e-6, rtol=1e-5)
    # The math: (alpha / r) * B A x, with alpha = r = 4.
    params = adapted.delta_parameters("a")
    x_seen = {}
    handle = model.get_submodule(Q0).register_forward_hook(lambda mod, args, out: x_seen.update(x=args[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    expected = F.linear(F.linear(x_seen["x"], params[f"{Q0}/lora_A"]), params[f"{Q0}/lora_B"])
    torch.testing.assert_close(full, expected, atol=1e-6, rtol=1e-5)


class OpCounter(TorchDispatchMode):
    """Records every aten op a forward runs."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_inactive_tasks_deltas_cost_nothing(rt):
    batch = rt.lm_batch()
    adapted_alone = adaptlang.apply(tiny_llama(), ONLY_A)
    adapted = adaptlang.apply(tiny_llama(), TWO_TASKS, task="second")
    randomize(adapted_alone, "a", seed=5)
    randomize(adapted, "a", seed=5)
    randomize(adapted, "b", "c", seed=6)
    for task in ("first", "half", "second", "only_a"):  # switching leaves nothing behind
        adapted.use(task)
    with OpCounter() as ours:
        out = logits(adapted, batch)
    with OpCounter() as ref:
        expected = logits(adapted_alone, batch)
    assert torch.equal(out, expected)
    # Deltas b and c have parts on the same sites (q_proj, mlp) but run no op at all.
    assert ours.ops == ref.ops
    adapted(**batch).loss.backward()
    for delta in ("b", "c"):
        assert all(p.grad is None for p in adapted.delta_parameters(delta).values())
    assert all(p.grad is not None for p in adapted.delta_parameters("a").values())


def test_adapters_run_in_the_written_order(rt):
    spec = """adaptlang 1
adapter x {
    after layers[0].mlp
    size  4
}
adapter y {
    after layers[0].mlp
    size  4
    act   tanh
}
task xy = x + y
task yx = y + x
task xhalf = 0.5 * x
"""
    model = tiny_llama()
    adapted = adaptlang.apply(model, spec)
    randomize(adapted, "x", "y")
    path = "model.layers.0.mlp"
    site = model.get_submodule(path)

    def adapter(delta: str, act, h: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """``h + w * up(act(down(h)))`` (LANGUAGE.md, scale 1)."""
        p = {k.rsplit("/", 1)[1]: v for k, v in adapted.delta_parameters(delta).items()}
        return h + weight * F.linear(act(F.linear(h, p["down.weight"], p["down.bias"])), p["up.weight"],
                                     p["up.bias"])

    h = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = site.base(h)
        with adapted.use("xy"):
            xy = site(h)
        with adapted.use("yx"):
            yx = site(h)
        torch.testing.assert_close(xy, adapter("y", torch.tanh, adapter("x", F.relu, base)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(yx, adapter("x", F.relu, adapter("y", torch.tanh, base)), atol=1e-6, rtol=1e-5)
        with adapted.use("xhalf"):  # a weight scales the adapter's residual branch
            torch.testing.assert_close(site(h), adapter("x", F.relu, base, 0.5), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(xy, yx)


# ------------------------------------------------------------ plain modules
class MLP(nn.Module):
    """A model that is not a transformers model: an ``nn.Sequential`` and a ``ModuleList`` of blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.layers = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(16, 16), "norm": nn.LayerNorm(16)})
                                    for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.layers:
            h = block["norm"](h + torch.relu(block["fc"](h)))
        return self.head(h)


PLAIN = """adaptlang 1
lora stem {
    on   stem.0, stem.2
    rank 2
}
lora blocks {
    on   layers[*].fc
    rank 4
    rank 2 for layers[-1].fc
}
ia3 gain {
    on layers[1:].fc
}
tune head {
    params head
}
task fit   = stem + blocks + gain
task probe = frozen(blocks) + head
"""


def test_a_plain_module_trains_switches_and_removes(rt):
    torch.manual_seed(0)
    model = MLP()
    before = rt.capture_state(model)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    base_out = model(x).detach()
    adapted = adaptlang.apply(model, PLAIN)
    assert adapted.tasks == ["fit", "probe"]
    assert sorted(adapted.delta_parameters("blocks")) == [
        f"layers.{i}.fc/lora_{f}" for i in range(3) for f in "AB"]
    assert adapted.delta_parameters("blocks")["layers.2.fc/lora_A"].shape == (2, 16)  # the override
    assert torch.equal(model(x), base_out)
    # fit: stem LoRAs r*(in+out), blocks 4*(16+16) twice and 2*(16+16), IA3 on two fc outputs.
    for task, expected_count in [("fit", 2 * (8 + 16) + 2 * (16 + 16) + 2 * 4 * 32 + 2 * 32 + 2 * 16),
                                 ("probe", 16 * 4 + 4)]:
        adapted.use(task)
        params = [p for _, p in adapted.trainable_parameters()]
        assert sum(p.numel() for p in params) == expected_count
        optimizer = torch.optim.Adam(params, lr=1e-2)
        losses = []
        for _ in range(20):
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
    adapted.use("fit")
    out = model(x).detach()
    assert not torch.equal(out, base_out)
    with adapted.use("probe"):
        assert not torch.equal(model(x), out)
    adapted.remove()
    rt.assert_same_state(model, before)
    assert torch.equal(model(x), base_out)


def test_a_plain_module_merges_and_unmerges():
    torch.manual_seed(0)
    model = MLP()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adaptlang.apply(model, PLAIN)
    randomize(adapted, "stem", "blocks", "gain")
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    out = model(x).detach()
    report = adapted.merge()
    assert sorted(report["merged"]) == ["layers.0.fc", "layers.1.fc", "layers.2.fc", "stem.0", "stem.2"]
    assert not torch.equal(model.stem[0].weight, weights["stem.0.weight"])
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
    adapted.unmerge()
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key
