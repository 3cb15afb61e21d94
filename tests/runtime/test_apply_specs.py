"""Every spec in ``specs/`` applied to a tiny random model of its family, every task trained.

The specs name ``model llama`` / ``bert-base``; ``adaptlang.apply`` compiles
them against the model it is given, here the ``tiny-*`` presets (2 layers,
width 32). For each (spec, task):

* a fresh task leaves the outputs bit-identical (LoRA B = 0, adapters' ``up``
  zero, IA3 ones, sparse zero, tune copies equal); prompts prepend tokens;
  a quantized base (QLoRA) changes the outputs only by its dequantization;
* 20 AdamW steps lower the loss; only the task's trainable parameters
  change, every other tensor the model reaches (base parameters, every
  delta's parameters, buffers, quantized storage) stays bit-identical;
* the trainable parameters are exactly those with ``requires_grad`` and
  their count is the plan's ``trainable_params``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import adaptlang
from adaptlang.errors import RuntimeApplyError
from adaptlang.plan.models import load_model

SPECS = Path(__file__).resolve().parents[2] / "specs"

#: spec file -> (tiny preset of its family, its tasks in declaration order).
SPEC_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bitfit.adapt": ("tiny-bert", ("default",)),
    "bottleneck.adapt": ("tiny-llama", ("houlsby", "pfeiffer")),
    "dora.adapt": ("tiny-llama", ("default",)),
    "ia3.adapt": ("tiny-llama", ("default",)),
    "lora.adapt": ("tiny-llama", ("default",)),
    "multitask.adapt": ("tiny-llama", ("sentiment", "qa", "both", "qa_v2")),
    "partial.adapt": ("tiny-llama", ("default",)),
    "prompt.adapt": ("tiny-llama", ("default",)),
    "qlora.adapt": ("tiny-llama", ("default",)),
    "rslora.adapt": ("tiny-llama", ("default",)),
    "sentiment.adapt": ("tiny-bert", ("sentiment",)),
    "sparse.adapt": ("tiny-llama", ("default",)),
}
#: Specs whose model is built with a task head (``load_model(head=..., num_labels=...)``).
SPEC_HEADS = {"sentiment.adapt": {"head": "sequence-classification", "num_labels": 2}}
CASES = [(spec, task) for spec, (_, tasks) in SPEC_TASKS.items() for task in tasks]
#: Tasks that include a prompt delta (-> its name): their outputs gain the virtual tokens.
PROMPT_TASKS = {("multitask.adapt", "qa_v2"): "instruct", ("prompt.adapt", "default"): "prefix"}
STEPS = 20


@pytest.fixture
def setup(rt, tmp_path):
    """Factory: ``(model, adapted, loss_fn)`` for a spec and task, on a fresh tiny model."""
    tokenizer = rt.word_tokenizer(tmp_path)

    def build(spec: str, task: str):
        preset, _ = SPEC_TASKS[spec]
        model = build_model(spec)
        adapted = adaptlang.apply(model, SPECS / spec, task=task, tokenizer=tokenizer)
        return model, adapted, loss_function(preset, model)

    return build


def build_model(spec: str) -> torch.nn.Module:
    """The spec's tiny preset with random weights, with its task head when it needs one."""
    model, _ = load_model(SPEC_TASKS[spec][0], device="cpu", **SPEC_HEADS.get(spec, {}))
    return model


def loss_function(preset: str, model: torch.nn.Module):
    """A fixed-batch loss: the LM loss, a classification loss, or (BertModel, no head) a regression
    of the last hidden state."""
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 64, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    if hasattr(model, "classifier"):
        labels = torch.tensor([0, 1])
        return lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss
    if preset == "tiny-bert":
        target = torch.randn(2, 7, 32, generator=gen)
        return lambda: torch.nn.functional.mse_loss(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                                    target)
    # Causal LMs shift the labels; T5 decodes them from its start token.
    return lambda: model(input_ids=ids, attention_mask=mask, labels=ids).loss


def main_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def every_tensor(model: torch.nn.Module, adapted) -> dict[int, tuple[str, torch.Tensor]]:
    """Every tensor the patched model can reach, by identity: parameters, buffers, every delta's parameters.

    Delta parameters are listed explicitly because a tune delta's copy sits in
    its slot only while a task using it is active.
    """
    found = {id(p): (name, p) for name, p in model.named_parameters()}
    found.update({id(b): (name, b) for name, b in model.named_buffers()})
    for delta in adapted.plan.to_dict()["deltas"]:
        found.update({id(p): (f"{delta}/{key}", p) for key, p in adapted.delta_parameters(delta).items()})
    return found


def test_table_covers_every_spec():
    assert sorted(SPEC_TASKS) == sorted(p.name for p in SPECS.glob("*.adapt"))


@pytest.mark.parametrize("spec,task", CASES)
def test_fresh_task_leaves_outputs_unchanged(spec, task, rt, tmp_path):
    model = build_model(spec)
    reference = copy.deepcopy(model)
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = main_output(model, ids)
    adapted = adaptlang.apply(model, SPECS / spec, task=task, tokenizer=rt.word_tokenizer(tmp_path))
    with torch.no_grad():
        after = main_output(model, ids)
    if (spec, task) in PROMPT_TASKS:
        (prompt,) = adapted.delta_parameters(PROMPT_TASKS[spec, task]).values()
        assert after.shape == (2, prompt.shape[0] + 7, 64)
        return
    if spec == "qlora.adapt":
        # The only change is the NF4 round trip of the base weights: the fresh LoRA adds nothing.
        report = adapted.memory_report()
        with torch.no_grad():
            for site in report["sites"]:
                dense = model.get_submodule(site["path"]).weight.dequantize(torch.float32)
                reference.get_submodule(site["path"]).weight.copy_(dense)
            expected = main_output(reference, ids)
        assert not torch.equal(after, before)
        torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-6)
        return
    assert torch.equal(after, before)


def train_and_check(model: torch.nn.Module, adapted, task: str, loss_fn) -> None:
    """Trains the active task for STEPS steps and checks the loss and what changed (module docstring)."""
    trainable = dict(adapted.trainable_parameters())
    assert trainable, "a task with nothing to train"
    # requires_grad is set on exactly the task's non-frozen deltas, nothing else in the model.
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable.values()}
    plan_tasks = adapted.plan.to_dict()["tasks"]
    assert sum(p.numel() for p in trainable.values()) == plan_tasks[task]["trainable_params"]

    tensors = every_tensor(model, adapted)
    snapshot = {key: t.detach().clone() for key, (_, t) in tensors.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    with torch.no_grad():
        start = loss_fn().item()
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = loss_fn().item()
    assert end < start, f"loss did not go down: {start:.4f} -> {end:.4f}"

    changed = {key for key, value in snapshot.items() if not torch.equal(tensors[key][1], value)}
    outside = sorted(tensors[key][0] for key in changed - {id(p) for p in trainable.values()})
    assert not outside, f"frozen tensors changed: {outside[:5]}"
    # Every trainable parameter that got a gradient moved.
    stuck = [name for name, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0
             and id(p) not in changed]
    assert not stuck


@pytest.mark.parametrize("spec,task", CASES)
def test_task_trains_and_only_its_parameters_change(spec, task, setup):
    model, adapted, loss_fn = setup(spec, task)
    train_and_check(model, adapted, task, loss_fn)


#: One spec written with roles (LANGUAGE.md, "Roles"): it applies unchanged to every family that has them.
PORTABLE = """adaptlang 1
lora attn {
    on   @layers[*].@q, @layers[*].@v
    rank 4
}
adapter last_mlp {
    after @layers[-1:].@mlp
    size  8
}
ia3 gain {
    on          @layers[0].@down
    feedforward true
}
"""


@pytest.mark.parametrize("preset,sites", [
    ("tiny-llama", [4, 1, 1]), ("tiny-mistral", [4, 1, 1]), ("tiny-qwen2", [4, 1, 1]), ("tiny-bert", [4, 1, 1]),
    # @layers spans both T5 stacks; a decoder block has self- and cross-attention q and v.
    ("tiny-t5", [2 * 2 + 2 * 4, 2, 2]),
])
def test_a_role_based_spec_trains_on_every_family(preset, sites):
    model, _ = load_model(preset, device="cpu")
    adapted = adaptlang.apply(model, PORTABLE)
    deltas = adapted.plan.to_dict()["deltas"]
    assert [len(deltas[d]["sites"]) for d in ("attn", "last_mlp", "gain")] == sites
    train_and_check(model, adapted, "default", loss_function(preset, model))


def test_text_prompt_without_tokenizer_names_the_delta(rt):
    model, _ = load_model("tiny-llama", device="cpu")
    before = rt.capture_state(model)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "multitask.adapt")
    message = str(info.value)
    assert "'instruct'" in message and "tokenizer" in message
    rt.assert_same_state(model, before)


def test_text_prompt_starts_from_the_tokenized_text(rt, tmp_path):
    tok = rt.word_tokenizer(tmp_path)
    model, _ = load_model("tiny-llama", device="cpu")
    embeddings = model.get_input_embeddings().weight.detach().clone()
    adapted = adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=tok)
    (prompt,) = adapted.delta_parameters("instruct").values()
    ids = tok("Answer the question:")["input_ids"]
    # PEFT's TEXT init: the text's token ids repeated to the 20 virtual tokens.
    expected = embeddings[(ids * 20)[:20]]
    assert torch.equal(prompt.detach(), expected)
