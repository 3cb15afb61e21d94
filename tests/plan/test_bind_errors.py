"""Binding errors that say why a module cannot take a delta (placed at the selector, with the numbers)."""

from __future__ import annotations

import pytest

import adaptlang
from adaptlang.errors import BindError

SPEC = """adaptlang 1
adapter par {
    parallel {on}
    size 8
}
"""


def test_a_parallel_adapter_on_a_module_whose_widths_differ_says_so():
    with pytest.raises(BindError) as info:
        adaptlang.compile(SPEC.replace("{on}", "layers[*].mlp.down_proj"), model="llama")
    diag = info.value.diagnostics[0]
    assert (diag.span.line, diag.span.col) == (3, 14)
    assert "input and output widths must be equal" in diag.hint
    assert diag.notes[0] == "'model.layers.0.mlp.down_proj' (Linear, in 11008 != out 4096)"  # Llama-2-7B's MLP


def test_a_parallel_adapter_on_a_block_of_equal_widths_binds():
    plan = adaptlang.compile(SPEC.replace("{on}", "layers[*].mlp"), model="llama")
    site = plan.to_dict()["deltas"]["par"]["sites"][0]
    assert (site["dim"], site["size"], site["params"]) == (4096, 8, 2 * 4096 * 8 + 8 + 4096)


HEAD_SPEC = "adaptlang 1\nlora a { on encoder.layer[*].attention.self.query\n rank 2 }\ntune head { params classifier }\n"


@pytest.mark.parametrize("model, spec, what, head", [
    ("tiny-bert", HEAD_SPEC, "BertModel has no task head", "sequence-classification"),
    ("tiny-llama", "adaptlang 1\ntune head { params score }\n", "LlamaModel has no task head",
     "sequence-classification"),
    ("tiny-gpt2", "adaptlang 1\ntune head { params score }\n", "GPT2LMHeadModel has no 'score' task head",
     "sequence-classification"),
])
def test_a_head_module_the_model_lacks_hints_the_head_to_build(model, spec, what, head):
    from adaptlang.plan.models import load_model

    built, _ = load_model(model, head="base" if what.endswith("no task head") else None)
    with pytest.raises(BindError) as info:
        adaptlang.compile(spec, built)
    (diag,) = info.value.diagnostics
    assert diag.hint == f"{what}: build the model with --head {head} (Python: compile(..., head=\"{head}\"))"
    assert adaptlang.compile(spec, model, head=head).sha256  # and with the head it binds


def test_a_misspelt_head_name_is_not_taken_for_a_missing_head():
    with pytest.raises(BindError) as info:
        adaptlang.compile(HEAD_SPEC.replace("classifier", "classifer"), "tiny-bert", head="sequence-classification")
    assert info.value.diagnostics[0].hint == "did you mean 'classifier'?"


def test_lm_head_on_a_bare_encoder_decoder_hints_seq2seq():
    from adaptlang.plan.models import load_model

    bare, _ = load_model("tiny-t5", head="base")
    with pytest.raises(BindError) as info:
        adaptlang.compile("adaptlang 1\ntune head { params lm_head }\n", bare)
    assert "--head seq2seq-lm" in info.value.diagnostics[0].hint


def test_a_head_for_a_built_module_is_refused():
    from adaptlang.errors import UsageError
    from adaptlang.plan.models import load_model

    model, _ = load_model("tiny-bert")
    with pytest.raises(UsageError, match="applies to a model reference, not to a built BertModel"):
        adaptlang.compile(HEAD_SPEC, model, head="sequence-classification")
