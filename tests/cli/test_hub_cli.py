"""``--model org/name``: hub ids in ``compile``, ``check``, ``match``, ``inspect`` and ``lock``.

Served offline from a prepared cache holding the real all-MiniLM-L6-v2
(the ``minilm_hub`` fixture, tests/conftest.py).
"""

from __future__ import annotations

import json

from tests.cli.conftest import invoke, run_adaptc, write_spec

#: LoRA on BERT's queries and values (bare BertModel paths).
SPEC = """\
adaptlang 1

lora qv {
    on   encoder.layer[*].attention.self.{query, value}
    rank 4
}

task main = qv
"""


def test_compile_names_the_hub_id(runner, minilm_hub, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "compile", spec, "--model", minilm_hub, "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["model"]["name"] == minilm_hub and plan["model"]["cls"] == "BertModel"
    # 6 layers x 2 sites x rank 4 x (384 + 384).
    assert plan["deltas"]["qv"]["params"] == 36864


def test_a_spec_may_name_a_hub_model(runner, minilm_hub, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC.replace("adaptlang 1\n", f"adaptlang 1\nmodel {minilm_hub}\n"))
    result = invoke(runner, "check", spec)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "compile", spec)
    assert result.exit_code == 0, result.output
    assert minilm_hub in result.stdout


def test_check_binds_to_the_hub_model(runner, minilm_hub, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "check", spec, "--model", minilm_hub)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok: 1 delta, 1 task; bound to {minilm_hub} (BertModel)"


def test_match_and_inspect_a_hub_model(runner, minilm_hub):
    result = invoke(runner, "match", "encoder.layer[*].attention.self.query", "--model", minilm_hub)
    assert result.exit_code == 0, result.output
    assert f"6 modules in {minilm_hub}" in result.stdout
    result = invoke(runner, "inspect", "--model", minilm_hub, "--depth", "1")
    assert result.exit_code == 0, result.output
    assert "encoder" in result.stdout and "embeddings" in result.stdout


def test_lock_records_the_hub_id(runner, minilm_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "lock", "qv.adapt", "--model", minilm_hub)
    assert result.exit_code == 0, result.output
    lock = json.loads((tmp_path / "adapt.lock").read_text())
    assert list(lock["specs"]["qv.adapt"]["models"]) == [minilm_hub]
    assert invoke(runner, "lock", "--check").exit_code == 0


def test_offline_and_not_cached_is_a_usage_error(runner, hub_cache, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "compile", spec, "--model", "acme/missing")
    assert result.exit_code == 2, result.output
    assert "no model directory 'acme/missing', and the hub model 'acme/missing' is not in the cache" \
        in result.stderr
    assert str(hub_cache.root) in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    assert "Traceback" not in result.stderr


def test_offline_and_not_cached_in_a_real_process(hub_cache, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    done = run_adaptc("check", spec, "--model", "acme/missing")
    assert done.returncode == 2, done.stderr
    assert "acme/missing" in done.stderr and str(hub_cache.root) in done.stderr


def test_compile_out_loads_the_hub_models_weights(runner, minilm_hub, tmp_path):
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "compile", spec, "--model", minilm_hub, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "and 1 fresh bundles: main.safetensors" in result.stderr
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["model"]["name"] == minilm_hub


def test_compile_out_with_pickled_hub_weights_writes_only_the_plan(runner, hub_cache, tmp_path):
    config = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 99}
    hub_cache.add("org/pickled", {"config.json": json.dumps(config), "pytorch_model.bin": b"not a pickle"})
    spec = write_spec(tmp_path, "qv.adapt", SPEC)
    result = invoke(runner, "compile", spec, "--model", "org/pickled", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["plan.json"]
    assert "no bundles: 'org/pickled': the hub model 'org/pickled' has no *.safetensors weights" in result.stderr
