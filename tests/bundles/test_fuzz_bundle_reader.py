"""Fuzzing the bundle reader: a mutated bundle loads with finite values or fails with an AdaptError.

Mutations of a valid bundle (LoRA, IA3 and sparse deltas, two tasks):

* bytes of the file, mostly in the header (length field, JSON, manifest text);
* the manifest's JSON values: a field deleted, or replaced by another type,
  a huge or non-finite number, a deep nesting; with the task plan's sha256
  recomputed half the time, so edits reach the checks past the hash;
* tensor bytes, with their sha256 recomputed (so NaN and infinity reach the
  finiteness check rather than the hash check).

The property: ``adaptlang.load`` either succeeds and every loaded value is
finite, or raises an :class:`~adaptlang.errors.AdaptError` (never another
exception) and leaves the model exactly as it was. Bounded: derandomized,
a few dozen examples each (a few seconds).
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptlang
from adaptlang.errors import AdaptError
from adaptlang.plan.plan import compute_plan_sha256

SPEC = """adaptlang 1
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
    alpha 8
}
ia3 scale {
    on layers[*].mlp.down_proj
}
sparse few {
    on      layers[0].mlp.up_proj
    density 1%
}
task a = attn + 0.5 * scale
task b = attn + few
"""

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Replacement values: type swaps, huge and non-finite numbers, deep nesting.
ODD_VALUES = st.sampled_from([
    None, True, False, 0, -1, 1, 2 ** 63, 10 ** 400, 1e308, -1e308, 0.5, "", "x", "../x", [], {}, [1, 2],
    {"a": 1}, "NaN-marker", "Inf-marker", "deep-marker",
])


def _model():
    from adaptlang.plan.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-llama", device="cpu")[0].eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A valid bundle's bytes, and one base model (restored by ``remove()`` after each load)."""
    torch.set_num_threads(1)
    adapted = adaptlang.apply(_model(), SPEC)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for task in adapted.tasks:
            for _, value in sorted(adapted.adapter_state_dict(task).items()):
                value.add_(torch.randn(value.shape, generator=gen) * 0.1)
    paths = adapted.save(tmp_path_factory.mktemp("fuzz"))
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return {"raw": paths[1].read_bytes(), "model": model, "state": state}


def split(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def paths_of(value, prefix=()):
    """Every (container path) in a JSON value, iteratively."""
    out, stack = [], [(value, prefix)]
    while stack:
        item, where = stack.pop()
        out.append(where)
        if isinstance(item, dict):
            stack.extend((v, (*where, k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, (*where, i)) for i, v in enumerate(item))
    return sorted(out, key=lambda p: [str(x) for x in p])


def replacement(value):
    if value == "NaN-marker":
        return float("nan")
    if value == "Inf-marker":
        return float("inf")
    if value == "deep-marker":
        deep = []
        for _ in range(2000):
            deep = [deep]
        return deep
    return value


def check_load(world, raw, tmp_path):
    path = tmp_path / "b.safetensors"
    path.write_bytes(raw)
    model = world["model"]
    try:
        loaded = adaptlang.load(model, path)
    except AdaptError:
        after = model.state_dict()
        assert after.keys() == world["state"].keys()
        assert all(torch.equal(after[k], v) for k, v in world["state"].items())
        return
    try:
        for task in loaded.tasks:
            for key, value in loaded.adapter_state_dict(task).items():
                assert bool(torch.isfinite(value).all()), key
    finally:
        loaded.remove()


@FUZZ
@given(data=st.data())
def test_mutated_bytes_load_or_fail_cleanly(world, tmp_path, data):
    raw = bytearray(world["raw"])
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.one_of(st.integers(0, 7), st.integers(8, 8 + n - 1), st.integers(0, len(raw) - 1)))
        raw[where] = data.draw(st.sampled_from([0, 0xFF, ord("["), ord("{"), ord('"'), ord("9"), ord("-"), 0x80,
                                                raw[where] ^ 0x01]))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    check_load(world, bytes(raw), tmp_path)


@FUZZ
@given(data=st.data())
def test_mutated_manifests_load_or_fail_cleanly(world, tmp_path, data):
    header, blob = split(world["raw"])
    manifest = json.loads(header["__metadata__"]["adaptlang"])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in paths_of(manifest) if p]))
        parent = manifest
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = replacement(data.draw(ODD_VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    if data.draw(st.booleans()) and isinstance(manifest.get("task_plan"), dict):
        body = {k: v for k, v in manifest["task_plan"].items() if k != "plan_sha256"}
        try:
            manifest["task_plan"]["plan_sha256"] = compute_plan_sha256(body)
        except (ValueError, TypeError, RecursionError):
            pass  # not JSON any more (NaN, deep): the reader must refuse it anyway
    try:
        header["__metadata__"]["adaptlang"] = json.dumps(manifest)
    except RecursionError:
        header["__metadata__"]["adaptlang"] = "[" * 5000 + "]" * 5000
    check_load(world, join(header, blob), tmp_path)


@FUZZ
@given(data=st.data())
def test_mutated_tensors_load_or_fail_cleanly(world, tmp_path, data):
    header, blob = split(world["raw"])
    blob = bytearray(blob)
    manifest = json.loads(header["__metadata__"]["adaptlang"])
    keys = sorted(k for k in header if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        start, end = header[key]["data_offsets"]
        if end == start:
            continue
        pos = data.draw(st.integers(start, end - 1))
        blob[pos] = data.draw(st.sampled_from([0x7F, 0xFF, 0x80, 0x00, blob[pos] ^ 0x40]))
        if data.draw(st.booleans()):  # a consistent file: the hash matches the damaged bytes
            manifest["tensors"][key] = hashlib.sha256(bytes(blob[start:end])).hexdigest()
    header["__metadata__"]["adaptlang"] = json.dumps(manifest)
    check_load(world, join(header, bytes(blob)), tmp_path)
