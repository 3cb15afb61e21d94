"""The ``Adapted`` handle end to end: inputs, task switching, weights, merging, removal, failures.

Everything goes through the public API (``adaptlang.apply`` and the
handle's methods) on tiny random models. "Exactly as before" is checked
with ``rt.capture_state`` / ``rt.assert_same_state``: same module and
parameter objects at every path, bit-identical state dict, same
``requires_grad`` flags, hooks and attributes.
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
from adaptlang.plan.models import load_model
from adaptlang.runtime.prompt import PromptController
from adaptlang.runtime.site import SiteModule
from adaptlang.runtime.tune import TuneSlots

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

MIXED = """adaptlang 1
lora plain {
    on    layers[*].self_attn.{q_proj, v_proj}
    rank  4
    alpha 8
}
lora dora {
    on      layers[*].self_attn.q_proj
    variant dora
    rank    2
}
ia3 scale {
    on          layers[*].{self_attn.k_proj, mlp.down_proj}
    feedforward true for mlp.down_proj
}
adapter side {
    after layers[*].mlp
    size  4
}
task mix = 0.5 * plain + dora + 0.75 * scale + side
"""


def tiny_llama(seed: int = 0) -> nn.Module:
    """The ``tiny-llama`` preset with random weights drawn from ``seed`` (equal seeds: equal models)."""
    torch.manual_seed(seed)
    model, _ = load_model("tiny-llama", device="cpu")
    return model


def randomize(adapted, *deltas: str, seed: int = 3) -> None:
    """Random values in the deltas' parameters (B and ``up`` nonzero), so they change outputs.

    Vectors that start at one (IA3, DoRA magnitudes) stay near one.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for delta in deltas:
            for key, p in adapted.delta_parameters(delta).items():
                centre = 1.0 if key.endswith(("/ia3_l", "/magnitude")) else 0.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=gen))


def logits(adapted, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return adapted(**batch).logits


# ------------------------------------------------------------------ inputs
def test_path_text_spec_and_plan_give_the_same_adaptation(rt):
    batch = rt.lm_batch()
    text = (SPECS / "lora.adapt").read_text()
    results = []
    for make_input in (lambda m: SPECS / "lora.adapt", lambda m: str(SPECS / "lora.adapt"), lambda m: text,
                       lambda m: adaptlang.parse(SPECS / "lora.adapt"),
                       lambda m: adaptlang.compile(SPECS / "lora.adapt", m)):
        model = tiny_llama()
        adapted = adaptlang.apply(model, make_input(model))
        assert adapted.model is model and adapted.tasks == ["default"] and adapted.active_task == "default"
        randomize(adapted, "qv", seed=1)
        results.append(logits(adapted, batch))
    for other in results[1:]:
        assert torch.equal(other, results[0])


def test_a_plan_for_another_model_is_refused_and_nothing_changes(rt):
    plan = adaptlang.compile(SPECS / "lora.adapt", "tiny-llama")
    model, _ = load_model("tiny-mistral", device="cpu")
    model.model.layers = model.model.layers[:1]  # a different structure
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

    def trainable_deltas() -> set[str]:
        names = {name for name, p in model.named_parameters() if p.requires_grad}
        assert names == {name for name, _ in adapted.trainable_parameters()}
        return {name.split(".parts.")[1].split(".")[0] for name in names}

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


# ----------------------------------------------------------------- merging
def test_merge_equals_unmerged_and_unmerge_restores_the_weights(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, MIXED)
    randomize(adapted, "plain", "dora", "scale", "side")
    batch = rt.lm_batch()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    unmerged = logits(adapted, batch)
    report = adapted.merge()
    assert adapted.merged
    # Adapters run beside the weights and stay active; every LoRA/DoRA/IA3 site folds in.
    assert set(report["not_merged"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert set(report["merged"]) == {f"model.layers.{i}.{m}" for i in range(2)
                                     for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "mlp.down_proj")}
    merged_state = model.state_dict()
    assert not torch.equal(merged_state[f"{Q0}.weight"], weights[f"{Q0}.weight"])
    assert not torch.equal(merged_state["model.layers.0.mlp.down_proj.weight"],
                           weights["model.layers.0.mlp.down_proj.weight"])
    torch.testing.assert_close(logits(adapted, batch), unmerged, atol=1e-5, rtol=1e-5)
    adapted.unmerge()
    assert not adapted.merged
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=key)
    torch.testing.assert_close(logits(adapted, batch), unmerged, atol=1e-6, rtol=1e-6)


def test_tied_and_quantized_weights_are_not_merged(rt):
    # GPT-2's lm_head shares its weight with wte: folding a delta into it would change the embedding too.
    torch.manual_seed(0)
    model, _ = load_model("tiny-gpt2", device="cpu")
    adapted = adaptlang.apply(model, "adaptlang 1\nlora l {\n    on @head, @layers[*].@qkv\n    rank 4\n}\n")
    randomize(adapted, "l")
    batch = rt.lm_batch()
    unmerged = logits(adapted, batch)
    wte = model.transformer.wte.weight.detach().clone()
    report = adapted.merge()
    assert report["merged"] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert list(report["not_merged"]) == ["lm_head"] and "tied" in report["not_merged"]["lm_head"]
    assert torch.equal(model.transformer.wte.weight, wte)
    torch.testing.assert_close(logits(adapted, batch), unmerged, atol=1e-5, rtol=1e-5)
    adapted.unmerge()

    qlora = adaptlang.apply(tiny_llama(), SPECS / "qlora.adapt")
    report = qlora.merge()
    assert report["merged"] == [] and len(report["not_merged"]) == 14
    assert set(report["not_merged"].values()) == {"the base weight is quantized"}


def test_switching_tasks_unmerges_first(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, TWO_TASKS)
    randomize(adapted, "a", "b", "c")
    batch = rt.lm_batch()
    with adapted.use("second"):
        expected = logits(adapted, batch)
    adapted.merge()
    adapted.use("second")
    assert not adapted.merged
    torch.testing.assert_close(logits(adapted, batch), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- removal
def train_a_few_steps(adapted, batch: dict, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for _, p in adapted.trainable_parameters()], lr=1e-2)
    adapted.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        adapted(**batch).loss.backward()
        optimizer.step()
    adapted.model.eval()


def test_remove_after_training_and_switching_gives_the_original_model(rt, tmp_path):
    model = tiny_llama()
    batch = rt.lm_batch()
    before = rt.capture_state(model)
    base_logits = model(**batch).logits.detach()
    adapted = adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    for task in ("sentiment", "qa_v2", "both"):
        adapted.use(task)
        train_a_few_steps(adapted, batch)
    adapted.use("qa_v2")  # a tuned lm_head copy in its slot, a prompt hook active
    assert model.lm_head.weight is not before.params["lm_head.weight"]
    assert adapted.remove() is model
    rt.assert_same_state(model, before)
    assert torch.equal(model(**batch).logits, base_logits)
    with pytest.raises(RuntimeApplyError, match="removed"):
        adapted.use("qa")
    # The model can be adapted again.
    adaptlang.apply(model, SPECS / "lora.adapt").remove()
    rt.assert_same_state(model, before)


def test_remove_while_merged_restores_objects_and_values_within_rounding(rt):
    model = tiny_llama()
    before = rt.capture_state(model)
    adapted = adaptlang.apply(model, MIXED)
    randomize(adapted, "plain", "dora", "scale", "side")
    adapted.merge()
    adapted.remove()
    after = rt.capture_state(model)
    assert after.types == before.types and all(after.modules[k] is m for k, m in before.modules.items())
    assert all(after.params[k] is p for k, p in before.params.items()) and after.flags == before.flags
    # merge then unmerge is exact up to float rounding only (as in PEFT).
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before.values[key], atol=1e-6, rtol=0)


def failing_after(monkeypatch, owner: type, method: str, nth: int) -> list[int]:
    """Makes ``owner.method`` raise on its ``nth`` call, after doing its work (a half-done step)."""
    original = getattr(owner, method)
    calls = [0]

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            raise ValueError("injected failure")
        return result

    monkeypatch.setattr(owner, method, wrapper)
    return calls


def site_paths(plan: dict, kinds: tuple[str, ...]) -> list[str]:
    """Plan site paths of the given delta kinds, in the order apply visits them."""
    return [site["path"] for d in plan["deltas"].values() if d["kind"] in kinds for site in d["sites"]]


@pytest.mark.parametrize("nth", [1, 3, 12])
def test_failed_apply_at_the_nth_site_leaves_the_model_untouched(nth, rt, tmp_path, monkeypatch):
    model = tiny_llama()
    plan = adaptlang.compile(SPECS / "multitask.adapt", model).to_dict()
    expected_site = site_paths(plan, ("lora", "ia3", "adapter", "sparse"))[nth - 1]
    before = rt.capture_state(model)
    failing_after(monkeypatch, SiteModule, "add_part", nth)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    message = str(info.value)
    assert f"'{expected_site}'" in message and "injected failure" in message
    rt.assert_same_state(model, before)


@pytest.mark.parametrize("owner,method,where", [
    (PromptController, "add", "model.embed_tokens"),   # after the prompt module and hook were added
    (TuneSlots, "add", "lm_head"),                     # the last delta: every site is wrapped by now
])
def test_failed_apply_in_prompt_or_tune_leaves_the_model_untouched(owner, method, where, rt, tmp_path,
                                                                    monkeypatch):
    model = tiny_llama()
    before = rt.capture_state(model)
    failing_after(monkeypatch, owner, method, 1)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    assert f"'{where}'" in str(info.value)
    rt.assert_same_state(model, before)


def test_failed_quantization_leaves_the_model_untouched(rt, monkeypatch):
    model = tiny_llama()
    before = rt.capture_state(model)
    quantized = [q["path"] for q in adaptlang.compile(SPECS / "qlora.adapt", model).to_dict()["base"]["quantize"]]
    assert len(quantized) == 14
    failing_after(monkeypatch, SiteModule, "quantize", 9)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "qlora.adapt")
    assert f"'{quantized[8]}'" in str(info.value) and "injected failure" in str(info.value)
    rt.assert_same_state(model, before)


def test_failed_first_activation_leaves_the_model_untouched(rt, tmp_path, monkeypatch):
    import adaptlang.runtime.adapted as adapted_module

    model = tiny_llama()
    before = rt.capture_state(model)

    def broken(config, patch):
        raise RuntimeApplyError("injected failure while activating")

    monkeypatch.setattr(adapted_module, "activate_config", broken)
    with pytest.raises(RuntimeApplyError, match="injected failure"):
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    rt.assert_same_state(model, before)


# ------------------------------------------------------------ quantization
def test_qlora_memory_report_counts_the_bytes_saved():
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPECS / "qlora.adapt")
    report = adapted.memory_report()
    paths = [site["path"] for site in report["sites"]]
    assert len(paths) == 14 and paths[0] == Q0  # 7 Linears per layer, 2 layers
    # The base weights are stored quantized, not as dense parameters.
    dense = {name for name, _ in model.named_parameters()}
    assert not any(f"{path}.base.weight" in dense for path in paths)
    # fp32 before: per layer q, o 32x32; k, v 16x32; gate, up, down 64x32.
    numel = 2 * (2 * 1024 + 2 * 512 + 3 * 2048)
    assert report["bytes_before"] == 4 * numel
    # NF4 with double quantization (QLoRA): n/2 bytes of codes, one uint8 absmax code per 64-value
    # block, one fp32 scale per 256 blocks, one fp32 offset.
    def nf4(n: int) -> int:
        return n // 2 + n // 64 + 4 * -(-(n // 64) // 256) + 4

    assert report["bytes_after"] == 2 * (2 * nf4(1024) + 2 * nf4(512) + 3 * nf4(2048))
    assert report["bytes_saved"] == report["bytes_before"] - report["bytes_after"] > 0
    assert sum(s["bytes_before"] - s["bytes_after"] for s in report["sites"]) == report["bytes_saved"]


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


def test_a_plain_module_trains_switches_merges_and_removes(rt):
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
    assert adapted.delta_parameters("blocks")["layers.2.fc/lora_A"].shape == (2, 16)
    assert torch.equal(model(x), base_out)


def test_a_plain_module_merges_and_unmerges(rt):
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
            torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=key)
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


def test_a_plain_module_merges_and_unmerges(rt):
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
            torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=key)
