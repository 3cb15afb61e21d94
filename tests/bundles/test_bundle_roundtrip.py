"""Saving and loading bundles: the issue's "done" criteria on LANGUAGE.md's multitask spec.

Reference values: the trained model's own logits (bit-identical in fp32 is
the contract), the plan's ``bundle_params`` (design.md's counting rules), the
spec file's bytes and ``signature_of``'s fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import adaptlang
from adaptlang.bundles import read_bundle
from adaptlang.bundles.manifest import BUNDLE_FORMAT, MANIFEST_KEY
from adaptlang.plan.plan import Plan
from adaptlang.plan.signature import signature_of

TASKS = ["sentiment", "qa", "both", "qa_v2"]


def test_each_trained_task_reloads_bit_identical_from_its_bundles(trained_multitask, bt):
    paths = trained_multitask["paths"]
    assert [p.name for p in paths] == [f"{t}.safetensors" for t in TASKS]
    # All bundles on one fresh base (same seed = same base weights), no spec file, no tokenizer.
    loaded = adaptlang.load(bt.tiny(), paths)
    assert loaded.tasks == TASKS
    got = bt.outputs(loaded)
    for task in TASKS:
        assert torch.equal(got[task], trained_multitask["outputs"][task]), task
    # Each bundle alone on its own fresh base.
    for task, path in zip(TASKS, paths):
        alone = adaptlang.load(bt.tiny(), path)
        assert alone.tasks == [task]
        assert torch.equal(bt.outputs(alone)[task], trained_multitask["outputs"][task]), task


def test_training_moved_every_task_away_from_the_base(trained_multitask, bt):
    # Guards the test above against comparing untrained (all-equal) outputs.
    with torch.no_grad():
        base = bt.tiny()(**bt.batch(seed=7)).logits
    for task in TASKS:
        ours = trained_multitask["outputs"][task][:, -7:]  # qa_v2 prepends 20 prompt positions
        assert not torch.allclose(ours, base, atol=1e-4), task


def test_a_bundle_holds_exactly_its_tasks_tensors(trained_multitask):
    adapted = trained_multitask["adapted"]
    for task, path in zip(TASKS, trained_multitask["paths"]):
        bundle = read_bundle(path)
        expected = adapted.adapter_state_dict(task)
        assert set(bundle.tensors) == set(expected)
        for key, value in expected.items():
            assert torch.equal(bundle.tensors[key], value), key
        # design.md: a task's bundle_params counts every parameter of its deltas, frozen ones too.
        assert sum(t.numel() for t in bundle.tensors.values()) == adapted.plan.task(task)["bundle_params"]
    qa_v2 = read_bundle(trained_multitask["paths"][3])
    assert {k.split("/")[0] for k in qa_v2.tensors} == {"attn", "mlp", "head", "instruct"}


def test_manifest_records_everything_needed_to_rebuild(trained_multitask, bt):
    adapted = trained_multitask["adapted"]
    source = bt.multitask.read_text(encoding="utf-8")
    manifest = read_bundle(trained_multitask["paths"][1]).manifest
    assert manifest["bundle_format"] == BUNDLE_FORMAT
    assert manifest["adaptlang_version"] == adaptlang.__version__
    assert manifest["task"] == "qa"
    assert manifest["spec"]["path"] == "multitask.adapt"
    assert manifest["spec"]["sources"] == {"multitask.adapt": source}
    assert manifest["spec"]["sha256"] == hashlib.sha256(source.encode()).hexdigest()
    assert manifest["plan_sha256"] == adapted.plan.sha256
    task_plan = Plan.from_json(manifest["task_plan"])  # a valid plan on its own
    assert task_plan.tasks == ("qa",) and task_plan.deltas == ("attn", "mlp")
    assert task_plan.task("qa") == adapted.plan.task("qa")
    assert manifest["model"]["fingerprint"] == signature_of(bt.tiny()).fingerprint
    assert "model.layers.1.mlp.up_proj" in manifest["model"]["structure"]


def test_resaving_loaded_bundles_gives_the_same_bytes(trained_multitask, bt, tmp_path):
    loaded = adaptlang.load(bt.tiny(), trained_multitask["paths"])
    again = loaded.save(tmp_path)
    for old, new in zip(trained_multitask["paths"], again):
        assert old.read_bytes() == new.read_bytes(), old.name


def test_save_a_subset_and_unknown_tasks(bt, tmp_path):
    adapted = bt.apply(bt.multitask)
    assert adapted.save(tmp_path, tasks=["qa"]) == [tmp_path / "qa.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["qa.safetensors"]
    with pytest.raises(adaptlang.UsageError) as err:
        adapted.save(tmp_path, tasks=["sentimnet"])
    assert "did you mean 'sentiment'?" in str(err.value)


def test_bfloat16_halves_the_tensors_and_loads_back_rounded(bt, tmp_path):
    adapted = bt.apply(bt.multitask)
    bt.randomize(adapted)
    full = adapted.save(tmp_path / "fp32", tasks=["qa"])[0]
    half = adapted.save(tmp_path / "bf16", tasks=["qa"], dtype=torch.bfloat16)[0]
    tensor_bytes = sum(v.numel() * 4 for v in adapted.adapter_state_dict("qa").values())
    stored = sum(t.numel() * t.element_size() for t in read_bundle(half).tensors.values())
    assert stored == tensor_bytes // 2
    # The rest of the file differs only by header text (dtype names, offsets' digits).
    assert abs(full.stat().st_size - half.stat().st_size - tensor_bytes // 2) < 100
    assert read_bundle(half).manifest["dtype"] == "bfloat16"
    loaded = adaptlang.load(bt.tiny(), half)
    for key, value in loaded.adapter_state_dict("qa").items():
        assert value.dtype == torch.float32
        assert torch.equal(value, adapted.adapter_state_dict("qa")[key].to(torch.bfloat16).float()), key


def test_size_on_disk_is_within_one_percent_of_tensors_plus_manifest(bt, tmp_path):
    # A Llama of realistic layer width: the safetensors index costs ~100 bytes per tensor,
    # which only matters next to toy tensors (measured for the report in docs/bundles.md).
    adapted = adaptlang.apply(bt.small_llama(), bt.multitask, tokenizer=bt.tokenizer)
    for path in adapted.save(tmp_path):
        bundle = read_bundle(path)
        tensors = sum(t.numel() * t.element_size() for t in bundle.tensors.values())
        manifest = len(json.dumps(bundle.manifest, sort_keys=True, separators=(",", ":")).encode())
        size = path.stat().st_size
        assert tensors + manifest <= size <= 1.01 * (tensors + manifest), (path.name, size, tensors, manifest)


def test_sparse_deltas_are_stored_sparse_and_keep_their_positions(bt, tmp_path):
    spec = """adaptlang 1
sparse sp {
    on      layers[*].mlp.down_proj
    density 5%
}
"""
    adapted = bt.apply(spec)
    bt.randomize(adapted)
    (path,) = adapted.save(tmp_path)
    bundle = read_bundle(path)
    k = adapted.plan.sites_of("sp")[0]["k"]  # round(0.05 * 32 * 64) = 102
    assert k == 102
    indices = bundle.tensors["sp/model.layers.0.mlp.down_proj/indices"]
    assert indices.dtype == torch.int64 and indices.shape == (k,)
    assert bundle.tensors["sp/model.layers.0.mlp.down_proj/values"].shape == (k,)
    # A base with other weights picks other positions by magnitude; the bundle's must win.
    other = adaptlang.apply(bt.tiny(seed=5), spec)
    assert not torch.equal(other.delta_buffers("sp")["model.layers.0.mlp.down_proj/indices"], indices)
    loaded = adaptlang.load(bt.tiny(seed=5), path)
    assert torch.equal(loaded.delta_buffers("sp")["model.layers.0.mlp.down_proj/indices"], indices)
    with torch.no_grad():
        assert torch.equal(adaptlang.load(bt.tiny(), path)(**bt.batch()).logits, adapted(**bt.batch()).logits)


def test_a_task_applied_from_a_plan_has_no_spec_but_loads(bt, tmp_path):
    plan = adaptlang.compile(bt.multitask, bt.tiny())
    adapted = adaptlang.apply(bt.tiny(), plan, tokenizer=bt.tokenizer)
    bt.randomize(adapted)
    (path,) = adapted.save(tmp_path, tasks=["sentiment"])
    manifest = read_bundle(path).manifest
    assert manifest["spec"] is None and manifest["plan_sha256"] == plan.sha256
    loaded = adaptlang.load(bt.tiny(), path)
    assert torch.equal(bt.outputs(loaded)["sentiment"], bt.outputs(adapted, ["sentiment"])["sentiment"])


def test_the_manifest_is_one_json_value_in_the_safetensors_metadata(trained_multitask):
    from safetensors import safe_open

    # Any safetensors reader opens a bundle; the manifest is a plain metadata string.
    with safe_open(str(trained_multitask["paths"][0]), "pt") as handle:
        metadata = handle.metadata()
        assert set(handle.keys()) == set(read_bundle(trained_multitask["paths"][0]).tensors)
    assert metadata["format"] == "pt"
    assert json.loads(metadata[MANIFEST_KEY])["task"] == "sentiment"


def test_provenance_keeps_every_file_a_spec_uses_with_relative_names(bt, tmp_path):
    (tmp_path / "specs" / "parts").mkdir(parents=True)
    (tmp_path / "specs" / "parts" / "common.adapt").write_text(
        "adaptlang 1\nlora shared {\n    on   layers[*].self_attn.o_proj\n    rank 2\n}\n")
    root = tmp_path / "specs" / "main.adapt"
    root.write_text('adaptlang 1\nuse "parts/common.adapt"\nlet r = 4\ntask t = shared\n')
    adapted = adaptlang.apply(bt.tiny(), root, overrides={"r": 8})
    (path,) = adapted.save(tmp_path / "out")
    spec = read_bundle(path).manifest["spec"]
    assert list(spec["sources"]) == ["main.adapt", "parts/common.adapt"]  # no machine paths
    assert spec["sources"]["parts/common.adapt"] == (tmp_path / "specs" / "parts" / "common.adapt").read_text()
    assert spec["overrides"] == {"r": 8}
