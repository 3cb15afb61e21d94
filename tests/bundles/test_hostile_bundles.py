"""Bundles that would damage a model (issue 10, section 3): non-finite values, integer dtypes, killed saves.

* A bundle holding NaN or infinity, or a manifest with ``alpha 1e308``, is
  refused at load, naming the file and the tensor or field; the model is
  exactly as it was (every parameter ``torch.equal``).
* A merge that would write NaN or infinity into a base weight is refused
  before it writes; unmerge and remove still work.
* ``save(dtype=torch.int8)`` and other non-float dtypes are refused before
  anything is written.
* Temporaries of killed saves are removed by the next save into the folder,
  only ours and only stale ones.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys

import pytest
import torch

import adaptlang
from adaptlang.errors import AdaptError, BundleError, RuntimeApplyError, UsageError
from adaptlang.plan.plan import compute_plan_sha256

SPEC = """adaptlang 1
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
ia3 scale {
    on layers[*].mlp.down_proj
}
sparse few {
    on      layers[0].mlp.up_proj
    density 1%
}
task a = attn
task b = attn + scale + few
"""

NAN, INF = float("nan"), float("inf")


def base_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.fixture
def saved(bt, tmp_path):
    adapted = bt.apply(SPEC)
    bt.randomize(adapted)
    return adapted, adapted.save(tmp_path / "good")


# ------------------------------------------------------------------ non-finite values at load
def poison_tensor(value):
    def change(adapted):
        with torch.no_grad():
            adapted.adapter_state_dict("a")["attn/model.layers.0.self_attn.q_proj/lora_B"][1, 2] = value
    return change


def edit_task_plan(path, change):
    """Edits a bundle's task plan and recomputes its plan_sha256, so only the edited value is wrong."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    manifest = json.loads(header["__metadata__"]["adaptlang"])
    change(manifest["task_plan"])
    body = {k: v for k, v in manifest["task_plan"].items() if k != "plan_sha256"}
    manifest["task_plan"]["plan_sha256"] = compute_plan_sha256(body)
    header["__metadata__"]["adaptlang"] = json.dumps(manifest)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def set_site(key, value, delta="attn"):
    def change(plan):
        plan["deltas"][delta]["sites"][0][key] = value
    return change


def set_weight(value):
    def change(plan):
        plan["tasks"]["a"]["deltas"][0]["weight"] = value
    return change


TENSOR_CASES = [
    ("nan_in_lora_B", poison_tensor(NAN), "holds 1 NaN or infinite value(s)"),
    ("inf_in_lora_B", poison_tensor(INF), "holds 1 NaN or infinite value(s)"),
    ("minus_inf_in_lora_B", poison_tensor(-INF), "'attn/model.layers.0.self_attn.q_proj/lora_B'"),
]


@pytest.mark.parametrize("poison,message", [c[1:] for c in TENSOR_CASES], ids=[c[0] for c in TENSOR_CASES])
def test_a_bundle_holding_non_finite_values_is_refused_and_the_model_unchanged(bt, tmp_path, poison, message):
    adapted = bt.apply(SPEC)
    bt.randomize(adapted)
    poison(adapted)
    (path, _) = adapted.save(tmp_path)
    model = bt.tiny()
    before = base_state(model)
    with pytest.raises(BundleError) as err:
        adaptlang.load(model, path)
    assert str(err.value).startswith(f"{path}: error: ") and message in str(err.value), str(err.value)
    assert_unchanged(model, before)


PLAN_CASES = [
    ("alpha_1e308", set_site("alpha", 1e308), "task_plan.deltas.attn.sites[0].alpha", "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("alpha_huge_int", set_site("alpha", 10 ** 400), "sites[0].alpha", "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("alpha_negative", set_site("alpha", -1.0), "sites[0].alpha", "expected a number > 0, found -1"),
    ("alpha_zero", set_site("alpha", 0), "sites[0].alpha", "expected a number > 0"),
    ("dropout_one", set_site("dropout", 1.0), "sites[0].dropout", "a probability in [0, 1)"),
    ("rank_zero", set_site("rank", 0), "task_plan", "not a valid adaptlang plan"),
    ("weight_1e300", set_weight(1e300), "tasks.a.deltas[0].weight", "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("weight_negative", set_weight(-2.0), "tasks.a.deltas[0].weight", "a task weight > 0"),
]


@pytest.mark.parametrize("change,field,message", [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES])
def test_a_manifest_value_out_of_the_language_ranges_is_refused(bt, saved, change, field, message):
    _, (path, _) = saved
    edit_task_plan(path, change)
    model = bt.tiny()
    before = base_state(model)
    with pytest.raises(BundleError) as err:
        adaptlang.load(model, path)
    text = str(err.value)
    assert text.startswith(f"{path}: error: manifest field ") and field in text and message in text, text
    assert_unchanged(model, before)


# ------------------------------------------------------------------ non-finite merges
def poison_loaded(key_part, value):
    def change(loaded):
        with torch.no_grad():
            for key, tensor in loaded.adapter_state_dict("b").items():
                if key_part in key:
                    tensor.view(-1)[0] = value
                    return
        raise AssertionError(key_part)
    return change


def overflow_factors(loaded):
    """Finite factors whose product overflows float32: caught while merging that site."""
    with torch.no_grad():
        for key, tensor in loaded.adapter_state_dict("b").items():
            if "layers.1.self_attn.v_proj" in key and "lora_" in key:
                tensor.fill_(3e38)


MERGE_CASES = [
    ("lora_B_inf", poison_loaded("lora_B", INF)),
    ("lora_A_nan", poison_loaded("lora_A", NAN)),
    ("ia3_inf", poison_loaded("ia3_l", INF)),
    ("sparse_values_nan", poison_loaded("few/", NAN)),
    ("lora_factors_overflow", overflow_factors),
]


@pytest.mark.parametrize("keep", ["device", "cpu"])  # exact undo of the sites merged before the refusal
@pytest.mark.parametrize("poison", [c[1] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_a_merge_that_would_write_non_finite_weights_is_refused_before_writing(bt, saved, poison, keep):
    _, paths = saved
    model = bt.tiny()
    before = base_state(model)
    loaded = adaptlang.load(model, paths, task="b")
    poison(loaded)
    patched = base_state(model)  # base weights and deltas (one of them non-finite now)
    with pytest.raises(RuntimeApplyError, match="NaN or infinite value"):
        loaded.merge(keep=keep)
    assert not loaded.merged
    for name, value in model.state_dict().items():  # NaN == NaN here: nothing was written
        assert torch.isclose(value, patched[name], rtol=0, atol=0, equal_nan=True).all(), name
    loaded.unmerge()  # a no-op, and no error
    loaded.remove()
    assert_unchanged(model, before)


# ------------------------------------------------------------------ storage dtypes
DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
          torch.float8_e4m3fn, "bfloat16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") + ("_str" if isinstance(d, str) else "")
                                             for d in DTYPES])
def test_save_refuses_a_non_float_dtype_before_writing(bt, saved, dtype):
    adapted, paths = saved
    old = {p: p.read_bytes() for p in paths}
    with pytest.raises(UsageError, match="trained values need a floating-point dtype"):
        adapted.save(paths[0].parent, dtype=dtype)
    assert {p: p.read_bytes() for p in paths} == old
    assert sorted(os.listdir(paths[0].parent)) == sorted(p.name for p in paths)
    with pytest.raises(UsageError, match="floating-point dtype"):
        adapted.save(paths[0].parent / "new", dtype=dtype)
    assert not (paths[0].parent / "new").exists()


def test_the_bundle_callback_refuses_a_non_float_dtype_at_once():
    from adaptlang.bundles.trainer import BundleCallback

    with pytest.raises(UsageError, match="BundleCallback"):
        BundleCallback(dtype=torch.int8)


# ------------------------------------------------------------------ temporaries of killed saves
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_removes_stale_temporaries_of_ours_only(bt, saved):
    from adaptlang import tempfiles as temps

    adapted, paths = saved
    folder = paths[0].parent
    host = temps._host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = folder / f".a.safetensors.adaptlang-{host}-{dead_pid()}-abcd1234.tmp"
        running = folder / f".a.safetensors.adaptlang-{host}-{live.pid}-abcd1234.tmp"
        mine = folder / f".a.safetensors.adaptlang-{host}-{os.getpid()}-abcd1234.tmp"
        other_host_new = folder / f".a.safetensors.adaptlang-elsewhere-{dead_pid()}-abcd1234.tmp"
        other_host_old = folder / f".b.safetensors.adaptlang-elsewhere-{dead_pid()}-zzzz9999.tmp"
        look_alikes = [folder / ".a.safetensors.x1y2z3ab.tmp",  # an older adaptlang's or another tool's
                       folder / f".a.safetensors.adaptlang-{host}-{dead_pid()}-abc.tmp",  # not our exact pattern
                       folder / f"a.safetensors.adaptlang-{host}-{dead_pid()}-abcd1234.tmp",  # not hidden
                       folder / "notes.tmp"]
        for path in [stale, running, mine, other_host_new, other_host_old, *look_alikes]:
            path.write_bytes(b"x" * 100)
        day_ago = os.path.getmtime(stale) - temps.STALE_AFTER_S - 60
        os.utime(other_host_old, (day_ago, day_ago))
        adapted.save(folder)
        left = set(os.listdir(folder))
        assert stale.name not in left and other_host_old.name not in left
        assert {running.name, mine.name, other_host_new.name, *(p.name for p in look_alikes)} <= left
        assert adaptlang.load(bt.tiny(), paths)  # the new bundles are whole
    finally:
        live.kill()
        live.wait()


def test_temporaries_are_named_by_the_pattern_the_cleaner_matches(tmp_path):
    from adaptlang import tempfiles as temps

    target = tmp_path / "task.safetensors"
    fd, name = temps.make_temp(target)
    os.close(fd)
    match = temps.TEMP_NAME.match(os.path.basename(name))
    assert match and match["target"] == "task.safetensors" and int(match["pid"]) == os.getpid()
    assert match["host"] == temps._host() and socket.gethostname()
    assert temps.remove_stale_temps(tmp_path) == []  # this process is alive: its file stays
    os.unlink(name)


def test_every_error_here_is_an_adapt_error():
    assert issubclass(BundleError, AdaptError) and issubclass(RuntimeApplyError, AdaptError)
