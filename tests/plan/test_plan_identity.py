"""What ``plan_sha256`` identifies: the bound spec and the model's structure, not the model's name.

The same spec on the same structure gets one hash whether the model was
handed over as a module (Python), a ``pkg.mod:factory`` or a directory (the
CLI); the name each path gives the model stays in the JSON for people.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import adaptlang
from adaptlang.errors import UsageError
from adaptlang.plan.plan import Plan, _legacy_plan_sha256, compute_plan_sha256

SPEC = """adaptlang 1
lora qv {
    on   encoder.layer[*].attention.self.{query, value}
    rank 4
}
tune head {
    params classifier
}
task sentiment = qv + head
"""

#: A 2-layer, 32-wide BERT with a 3-label classifier.
SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=60,
             num_labels=3)

FACTORY = f'''
from transformers import BertConfig, BertForSequenceClassification

def build():
    return BertForSequenceClassification(BertConfig(**{SMALL!r}))
'''


@pytest.fixture
def refs(tmp_path, monkeypatch):
    """``(factory ref, directory)`` for the same model structure."""
    (tmp_path / "adaptlang_identity_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "bert-small"
    BertConfig(architectures=["BertModel"], dtype="float32", **SMALL).save_pretrained(str(folder))
    return "adaptlang_identity_models:build", folder


def test_module_factory_and_directory_give_one_plan_sha256(refs):
    factory, folder = refs
    torch.manual_seed(0)
    from_python = adaptlang.compile(SPEC, BertForSequenceClassification(BertConfig(**SMALL)))
    from_factory = adaptlang.compile(SPEC, factory)
    from_folder = adaptlang.compile(SPEC, str(folder), head="sequence-classification", num_labels=3)
    names = [p.model["name"] for p in (from_python, from_factory, from_folder)]
    assert names == ["BertForSequenceClassification", factory, "bert-small"]  # shown, not hashed
    assert from_python.sha256 == from_factory.sha256 == from_folder.sha256
    bodies = [{**p.to_dict(), "model": {**p.model, "name": ""}} for p in (from_python, from_factory, from_folder)]
    assert bodies[0] == bodies[1] == bodies[2]
    # A different structure is a different plan: 2 labels instead of 3 (classifier 32 x 2 + 2).
    two = adaptlang.compile(SPEC, str(folder), head="sequence-classification", num_labels=2)
    assert two.delta("head")["params"] == 32 * 2 + 2 and two.sha256 != from_folder.sha256


def test_the_hash_covers_everything_but_the_name():
    plan = adaptlang.compile(SPEC, "tiny-bert", head="sequence-classification")
    data = plan.to_dict()
    renamed = {**data, "model": {**data["model"], "name": "my-bert"}}
    assert Plan.from_json(json.dumps(renamed)).sha256 == plan.sha256  # a label: editing it is no drift
    for section, key, value in [("model", "dtype", "float16"), ("model", "cls", "BertModel"),
                                ("model", "fingerprint", "0" * 64)]:
        edited = {**data, section: {**data[section], key: value}}
        with pytest.raises(UsageError, match="plan_sha256 does not match"):
            Plan.from_json(json.dumps(edited))


def test_plans_hashed_with_their_name_still_read():
    """adaptlang 0.1 hashed ``model.name`` too; such a plan reads, with its current hash."""
    plan = adaptlang.compile(SPEC, "tiny-bert", head="sequence-classification")
    data = plan.to_dict()
    data["plan_sha256"] = _legacy_plan_sha256(data)
    assert data["plan_sha256"] != plan.sha256
    assert Plan.from_json(json.dumps(data)).sha256 == plan.sha256 == compute_plan_sha256(data)
    data["model"]["name"] = "changed"  # the old hash covered the name: now it matches neither
    with pytest.raises(UsageError, match="plan_sha256 does not match"):
        Plan.from_json(json.dumps(data))
