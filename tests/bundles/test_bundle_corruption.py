"""Broken files and interrupted saves: a clear BundleError naming the file, nothing else changed.

Each corruption is made by hand on a real bundle (the safetensors layout:
u64 header length, JSON header, data). Every load attempt must leave the
model exactly as it was; every failed save must leave the previous file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

import adaptlang
from adaptlang.bundles import files
from adaptlang.errors import BundleError

SPEC = """adaptlang 1
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
task a = attn
task b = attn
"""


@pytest.fixture
def saved(bt, tmp_path):
    adapted = bt.apply(SPEC)
    bt.randomize(adapted)
    paths = adapted.save(tmp_path)
    return adapted, paths


def split(path):
    """Returns (header dict, header bytes, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8:8 + n], raw[8 + n:]


def rewrite(path, header, data):
    """Writes a safetensors file from a header dict and data bytes (no checks)."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_manifest(path, change):
    header, _, data = split(path)
    manifest = json.loads(header["__metadata__"]["adaptlang"])
    change(manifest)
    header["__metadata__"]["adaptlang"] = json.dumps(manifest)
    rewrite(path, header, data)


def corrupt_random(path):
    path.write_bytes(bytes(range(256)) * 3)


def corrupt_foreign(path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


def corrupt_header_length_too_long(path):
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])


def corrupt_header_length_too_short(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", n - 10) + raw[8:])


def corrupt_truncated(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])


def corrupt_tampered_tensor(path):
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a byte inside the last tensor's data
    path.write_bytes(bytes(raw))


def corrupt_spec_sha(path):
    def change(m):
        m["spec"]["sources"]["<string>"] += "\n# edited\n"
    edit_manifest(path, change)


def corrupt_plan_sha(path):
    def change(m):
        m["task_plan"]["deltas"]["attn"]["sites"][0]["alpha"] = 99.0
    edit_manifest(path, change)


def corrupt_tensor_table(path):
    def change(m):
        m["tensors"].pop(sorted(m["tensors"])[0])
    edit_manifest(path, change)


def corrupt_newer_format(path):
    def change(m):
        m["bundle_format"] = 99
    edit_manifest(path, change)


def corrupt_overlapping_offsets(path):
    header, _, data = split(path)
    first = sorted(k for k in header if k != "__metadata__")[1]
    start, end = header[first]["data_offsets"]
    header[first]["data_offsets"] = [start - 4, end - 4]
    rewrite(path, header, data)


CASES = [
    (corrupt_random, "not a safetensors file"),
    (corrupt_foreign, "not an adaptlang bundle"),
    (corrupt_header_length_too_long, "header claims"),
    (corrupt_header_length_too_short, "header is not JSON"),
    (corrupt_truncated, "truncated"),
    (corrupt_tampered_tensor, "does not match its sha256 in the manifest"),
    (corrupt_spec_sha, "does not match its sha256"),
    (corrupt_plan_sha, "plan_sha256 does not match"),
    (corrupt_tensor_table, "tensor table"),
    (corrupt_newer_format, "bundle format 99 is newer"),
    (corrupt_overlapping_offsets, "overlap or gap"),
]


@pytest.mark.parametrize("corrupt,message", CASES, ids=[c.__name__.removeprefix("corrupt_") for c, _ in CASES])
def test_a_broken_bundle_is_a_clear_error_and_the_model_is_untouched(bt, saved, corrupt, message):
    _, paths = saved
    corrupt(paths[0])
    model = bt.tiny()
    before = bt.capture_state(model)
    with pytest.raises(BundleError) as err:
        adaptlang.load(model, paths)  # the good bundle next to it changes nothing either
    text = str(err.value)
    assert text.startswith(f"{paths[0]}: error: "), text
    assert message in text, text
    bt.assert_same_state(model, before)


def test_a_missing_file_is_named(bt, tmp_path):
    with pytest.raises(BundleError, match="no such file"):
        adaptlang.load(bt.tiny(), tmp_path / "nope.safetensors")


def test_a_crash_mid_write_keeps_the_previous_files(bt, saved, monkeypatch):
    from adaptlang.bundles import bundle as bundle_mod

    adapted, paths = saved
    old = {p: p.read_bytes() for p in paths}
    bt.randomize(adapted, seed=9)  # new values to save

    def half_then_full_disk(handle, tensors, metadata):
        handle.write(b"\0" * 100)  # part of a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_mod, "write_safetensors", half_then_full_disk)
    with pytest.raises(BundleError) as err:
        adapted.save(paths[0].parent)
    assert "No space left on device" in str(err.value) and "nothing was replaced" in str(err.value)
    assert {p: p.read_bytes() for p in paths} == old
    assert sorted(os.listdir(paths[0].parent)) == ["a.safetensors", "b.safetensors"]  # no temporaries left


KILLED_CHILD = textwrap.dedent("""
    import sys, time, torch
    import adaptlang
    from adaptlang.bundles import bundle as bundle_mod
    from adaptlang.plan.models import load_model

    torch.manual_seed(0)
    adapted = adaptlang.apply(load_model("tiny-llama", device="cpu")[0], sys.argv[2])
    with torch.no_grad():
        for value in adapted.adapter_state_dict("a").values():
            value.add_(5.0)
    real = bundle_mod.write_safetensors

    def slow(handle, tensors, metadata):
        real(handle, tensors, metadata)
        handle.flush()
        print("written, not renamed", flush=True)
        time.sleep(60)  # killed here: the file is complete on disk, the rename not done

    bundle_mod.write_safetensors = slow
    adapted.save(sys.argv[1])
""")


def test_a_process_killed_mid_save_leaves_the_previous_files(bt, saved):
    adapted, paths = saved
    old = {p: p.read_bytes() for p in paths}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(paths[0].parent), SPEC],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written, not renamed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert {p: p.read_bytes() for p in paths} == old
    leftovers = [n for n in os.listdir(paths[0].parent) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".a.safetensors.")  # hidden, never read
    loaded = adaptlang.load(bt.tiny(), paths)  # the previous bundles, whole and valid
    for key, value in adapted.adapter_state_dict("a").items():
        assert torch.equal(loaded.adapter_state_dict("a")[key], value), key


def test_a_failure_on_the_second_file_replaces_neither(bt, saved, monkeypatch):
    from adaptlang.bundles import bundle as bundle_mod

    adapted, paths = saved
    old = {p: p.read_bytes() for p in paths}
    bt.randomize(adapted, seed=9)
    real = bundle_mod.write_safetensors
    calls = []

    def second_fails(handle, tensors, metadata):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a crash, not an OSError: propagates as is
        real(handle, tensors, metadata)

    monkeypatch.setattr(bundle_mod, "write_safetensors", second_fails)
    with pytest.raises(KeyboardInterrupt):
        adapted.save(paths[0].parent)
    assert {p: p.read_bytes() for p in paths} == old
    assert sorted(os.listdir(paths[0].parent)) == ["a.safetensors", "b.safetensors"]
    monkeypatch.setattr(bundle_mod, "write_safetensors", real)
    adapted.save(paths[0].parent)
    assert all(p.read_bytes() != old[p] for p in paths)


def test_writes_fsync_before_renaming(bt, saved, monkeypatch):
    adapted, paths = saved
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    adapted.save(paths[0].parent)
    # Both temporaries are synced before the first rename; the folder is synced after.
    assert events[:3] == ["fsync", "fsync", "replace"] and events[-1] == "fsync"


def test_an_unwritable_folder_is_a_bundle_error(bt, saved, tmp_path):
    adapted, _ = saved
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BundleError, match="cannot create the folder"):
        adapted.save(blocker / "sub")
