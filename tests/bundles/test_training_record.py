"""The manifest's optional ``training`` record: checked when written and read, shown, and optional."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import adaptlang
from adaptlang.bundles.bundle import read_bundle
from adaptlang.bundles.describe import describe_file
from adaptlang.bundles.manifest import MANIFEST_KEY
from adaptlang.errors import BundleError
from adaptlang.plan.models import load_model

SPEC = "adaptlang 1\nlora attn { on layers[*].self_attn.q_proj\n rank 2 }\ntask a = attn\n"


def record(**changes):
    data = {"file": "train.jsonl", "sha256": "ab" * 32, "rows": 10, "used": 9, "dropped": 1, "truncated": 0,
            "split": None}
    base = {
        "objective": "classification", "completion_only": False, "fields": {"text": "text", "label": "label"},
        "model": {"name": "model", "kind": "directory", "head": "sequence-classification",
                  "new_parameters": ["classifier.weight"]},
        "labels": ["neg", "pos"], "train": data, "eval": dict(data, file="test.jsonl", used=10, dropped=0),
        "max_length": None, "seed": 0, "hyperparameters": {"learning_rate": 0.001, "eval_strategy": "epoch"},
        "metrics": {"before": {"accuracy": 0.5, "loss": 0.69}, "after": {"accuracy": 0.9, "loss": 0.2}},
        "train_loss": 0.4, "steps": 20, "epochs": 2.0, "world_size": 1, "resumed_from": None,
        "versions": {"adaptlang": "0.1.0", "torch": torch.__version__},
    }
    return {**base, **changes}


@pytest.fixture()
def adapted():
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", device="cpu")
    return adaptlang.apply(model, SPEC)


def rewrite_manifest(path, change):
    """Rewrites a bundle's manifest through ``change(manifest)``, keeping its tensors (and so their hashes)."""
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    manifest = json.loads(metadata[MANIFEST_KEY])
    change(manifest)
    metadata[MANIFEST_KEY] = json.dumps(manifest)
    save_file(tensors, str(path), metadata=metadata)


def test_a_record_round_trips_and_is_shown(tmp_path, adapted):
    path = adapted.save(tmp_path, training=record())[0]
    assert read_bundle(path).manifest["training"] == record()
    text = describe_file(path)
    assert "  objective     classification\n" in text
    assert "  labels        0=neg, 1=pos\n" in text
    assert "  train data    train.jsonl (10 rows, 9 used, 1 dropped) sha256 abababababababab\n" in text
    assert "  steps         20 (2 epochs), seed 0, 1 process\n" in text
    assert "  eval accuracy 0.5 -> 0.9\n" in text


def test_bundles_without_a_record_still_load_and_show(tmp_path, adapted):
    path = adapted.save(tmp_path)[0]
    assert "training" not in read_bundle(path).manifest
    assert "training" not in describe_file(path)
    loaded = adaptlang.load(load_model("tiny-llama", device="cpu")[0], path)
    assert loaded.tasks == ["a"]


@pytest.mark.parametrize("bad, field", [
    (record(objective="regression"), "objective"),
    (record(seed=-1), "seed"),
    (record(metrics={"after": {"loss": float("nan")}}), "metrics"),
    ({k: v for k, v in record().items() if k != "train"}, "train"),
    (record(extra=1), "extra"),
])
def test_a_malformed_record_is_refused_when_written(tmp_path, adapted, bad, field):
    with pytest.raises(BundleError, match=f"the manifest's training record is malformed: {field}"):
        adapted.save(tmp_path, training=bad)
    assert not (tmp_path / "a.safetensors").exists()


def test_a_malformed_record_is_refused_when_read_but_unknown_fields_pass(tmp_path, adapted):
    path = adapted.save(tmp_path, training=record())[0]
    rewrite_manifest(path, lambda m: m["training"].update(newer_field={"x": 1}))
    assert read_bundle(path).manifest["training"]["newer_field"] == {"x": 1}  # a newer adaptlang's addition
    rewrite_manifest(path, lambda m: m["training"].update(steps="many"))
    with pytest.raises(BundleError, match="training record is malformed: steps"):
        read_bundle(path)
