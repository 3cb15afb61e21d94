"""``adapt.lock``: deterministic, and drift named with its cause (spec, model, grammar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptlang.bundles import lockfile
from adaptlang.bundles.lockfile import build_lock, check_lock, lock_json, read_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path):
    """A folder with the multitask spec, a spec it ``use``s, and a tiny Llama model folder (config only)."""
    from transformers import LlamaConfig

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "common.adapt").write_text(
        "adaptlang 1\nlora shared {\n    on   layers[*].self_attn.o_proj\n    rank 2\n}\n")
    (tmp_path / "specs" / "multi.adapt").write_text(
        (REPO / "specs" / "multitask.adapt").read_text() + '\nuse "common.adapt"\ntask extra = shared\n')
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(tmp_path / "model")
    return tmp_path


def locked(ws, models=("tiny-llama",)):
    lock = build_lock([ws / "specs" / "multi.adapt"], list(models), ws)
    (ws / "adapt.lock").write_text(lock_json(lock))
    return read_lock(ws / "adapt.lock")


def test_the_lock_is_deterministic_and_relative(workspace):
    first = lock_json(build_lock([workspace / "specs" / "multi.adapt"], ["tiny-llama"], workspace))
    second = lock_json(build_lock([workspace / "specs" / "multi.adapt"], ["tiny-llama"], workspace))
    assert first == second
    lock = json.loads(first)
    entry = lock["specs"]["specs/multi.adapt"]["models"]["tiny-llama"]
    assert set(entry["tasks"]) == {"sentiment", "qa", "both", "qa_v2", "extra"}
    # tiny-llama counts, design.md rules: attn 2 layers x (q 8*(32+32) + v 8*(32+16)).
    assert entry["deltas"]["attn"] == {"kind": "lora", "sites": 4, "params": 1792}
    assert str(workspace) not in first


def test_no_drift_and_formatting_edits_are_not_drift(workspace):
    lock = locked(workspace)
    assert check_lock(lock, workspace) == []
    spec = workspace / "specs" / "multi.adapt"
    spec.write_text(spec.read_text().replace("rank    16", "rank 16   # reformatted"))
    assert check_lock(lock, workspace) == []


def test_a_spec_change_in_a_used_file_is_named(workspace):
    lock = locked(workspace)
    common = workspace / "specs" / "common.adapt"
    common.write_text(common.read_text().replace("rank 2", "rank 4"))
    (drift,) = check_lock(lock, workspace)
    assert drift.obj == "specs/multi.adapt (model tiny-llama)"
    assert drift.message.startswith("the plan changed")
    assert "the spec changed (its sources, or a file it uses)" in drift.notes
    assert "delta 'shared': params 256 -> 512" in drift.notes  # 2 layers x rank x (32 + 32)
    assert "task 'extra': trainable_params 256 -> 512, bundle_params 256 -> 512" in drift.notes


def test_a_model_change_is_named(workspace):
    from transformers import LlamaConfig

    lock = locked(workspace, models=[str(workspace / "model")])
    assert check_lock(lock, workspace) == []
    config = LlamaConfig.from_pretrained(workspace / "model")
    config.intermediate_size = 48
    config.save_pretrained(workspace / "model")
    (drift,) = check_lock(lock, workspace)
    assert any(n.startswith("the model changed (fingerprint ") for n in drift.notes)
    assert not any("the spec changed" in n for n in drift.notes)


def test_a_grammar_change_is_named(workspace, monkeypatch):
    lock = locked(workspace)
    # A lock written under another grammar whose plan differed (simulated: that run's recorded values).
    lock["grammar_sha256"] = "0" * 64
    lock["specs"]["specs/multi.adapt"]["models"]["tiny-llama"]["plan_sha256"] = "f" * 64
    (drift,) = check_lock(lock, workspace)
    assert drift.notes[0] == "the grammar changed"


def test_missing_specs_and_unlocked_specs(workspace, tmp_path):
    lock = locked(workspace)
    other = workspace / "specs" / "other.adapt"
    other.write_text("adaptlang 1\n")
    (unlocked,) = check_lock(lock, workspace, [other])
    assert (unlocked.obj, unlocked.message) == ("specs/other.adapt", "not in the lock")
    (workspace / "specs" / "multi.adapt").unlink()
    (gone,) = check_lock(lock, workspace)
    assert gone.message == "the spec is gone"


def test_a_changed_default_model_is_named(workspace):
    lock = locked(workspace, models=[])  # the spec's own `model llama`
    assert list(lock["specs"]["specs/multi.adapt"]["models"]) == ["llama"]
    spec = workspace / "specs" / "multi.adapt"
    spec.write_text(spec.read_text().replace("model llama ", "model tiny-llama "))
    (drift,) = check_lock(lock, workspace)
    assert drift.message == "the spec's default model changed: llama -> tiny-llama"


def test_bad_lock_files_are_usage_errors(tmp_path):
    from adaptlang.errors import UsageError

    with pytest.raises(UsageError, match="no lock file"):
        read_lock(tmp_path / "adapt.lock")
    (tmp_path / "adapt.lock").write_text("{}")
    with pytest.raises(UsageError, match="not an adaptlang lock file"):
        read_lock(tmp_path / "adapt.lock")
    assert lockfile.LOCK_FORMAT == 1
