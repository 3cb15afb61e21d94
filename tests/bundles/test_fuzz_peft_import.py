"""Fuzzing the PEFT importer: a mutated adapter folder imports (and loads finite) or fails with an AdaptError.

Mutations of a valid LoRA folder (written by hand with PEFT's keys, rank and
alpha patterns included):

* ``adapter_config.json`` values: a field deleted, or replaced by another
  type, a huge or non-finite number, a bad or catastrophic regex, a deep
  nesting; or the JSON text's bytes;
* ``adapter_model.safetensors``: a tensor reshaped, retyped, renamed,
  removed, or given NaN/infinity.

The property: ``import_peft`` either writes a spec and a bundle that
``adaptlang.load`` loads with finite values, or raises an
:class:`~adaptlang.errors.AdaptError` (never another exception) and writes
nothing. Bounded: derandomized, a few dozen examples each.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import adaptlang
from adaptlang.bundles import import_peft
from adaptlang.errors import AdaptError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PREFIX = "base_model.model.model.layers.{}.self_attn.{}"
CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
          "rank_pattern": {"model.layers.1.self_attn.q_proj": 2}, "alpha_pattern": {"v_proj": 3},
          "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False, "bias": "none",
          "base_model_name_or_path": None, "feedforward_modules": None}

ODD_VALUES = st.sampled_from([
    None, True, False, 0, -1, 2, 10 ** 30, 10 ** 400, 1e308, -1e308, 0.5, "", "x", "(", "(a+)+$", "IA3",
    "PROMPT_TUNING", [], {}, ["q_proj"], {"q_proj": "x"}, {"(": 1}, float("nan"), float("inf"), "deep",
])


def tensors():
    gen = torch.Generator().manual_seed(0)
    out = {}
    for layer in (0, 1):
        r = 2 if layer == 1 else 4
        out[PREFIX.format(layer, "q_proj") + ".lora_A.weight"] = torch.randn(r, 32, generator=gen) * 0.1
        out[PREFIX.format(layer, "q_proj") + ".lora_B.weight"] = torch.randn(32, r, generator=gen) * 0.1
        out[PREFIX.format(layer, "v_proj") + ".lora_A.weight"] = torch.randn(4, 32, generator=gen) * 0.1
        out[PREFIX.format(layer, "v_proj") + ".lora_B.weight"] = torch.randn(16, 4, generator=gen) * 0.1
    return out


@pytest.fixture(scope="module")
def base():
    from adaptlang.plan.models import load_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model("tiny-llama", device="cpu")[0].eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def check_import(base, tmp_path, config_text, values):
    model, state = base
    for name in ("peft", "out"):
        shutil.rmtree(tmp_path / name, ignore_errors=True)
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(config_text)
    save_file(values, str(folder / "adapter_model.safetensors"))
    try:
        _, bundle = import_peft(folder, model, tmp_path / "out", name="x")
    except AdaptError:
        assert not (tmp_path / "out").exists()
        return
    loaded = adaptlang.load(model, bundle)
    try:
        for key, value in loaded.adapter_state_dict("x").items():
            assert bool(torch.isfinite(value).all()), key
    finally:
        loaded.remove()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_the_unmutated_folder_imports(base, tmp_path):
    check_import(base, tmp_path, json.dumps(CONFIG).encode(), tensors())
    assert (tmp_path / "out" / "x.safetensors").is_file()


@FUZZ
@given(data=st.data())
def test_mutated_configs_import_or_fail_cleanly(base, tmp_path, data):
    config = json.loads(json.dumps(CONFIG))
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(config) + ["r", "lora_alpha", "rank_pattern", "alpha_pattern"]))
        if data.draw(st.integers(0, 4)) == 0:
            config.pop(key, None)
            continue
        value = data.draw(ODD_VALUES)
        if value == "deep":
            text = json.dumps(config)[:-1] + f', "{key}_deep": ' + "[" * 3000 + "]" * 3000 + "}"
            check_import(base, tmp_path, text.encode(), tensors())
            return
        if isinstance(config.get(key), dict) and data.draw(st.booleans()):
            config[key] = {data.draw(st.sampled_from(["q_proj", "v_proj", "(", "(x+)+y", "x" * 2000])): value}
        else:
            config[key] = value
    text = json.dumps(config).encode()
    if data.draw(st.integers(0, 5)) == 0:  # bytes of the text too
        raw = bytearray(text)
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.sampled_from([0xFF, ord("["), ord("}"), ord("9"), ord('"')]))
        text = bytes(raw)
    check_import(base, tmp_path, text, tensors())


@FUZZ
@given(data=st.data())
def test_mutated_adapter_tensors_import_or_fail_cleanly(base, tmp_path, data):
    values = tensors()
    keys = sorted(values)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        if key not in values:
            continue
        op = data.draw(st.sampled_from(["nan", "inf", "reshape", "int", "half", "rename", "drop", "scalar", "huge"]))
        tensor = values[key]
        if op in ("nan", "inf") and tensor.is_floating_point() and tensor.numel():
            tensor = tensor.clone()
            tensor.view(-1)[data.draw(st.integers(0, tensor.numel() - 1))] = float(op)
        elif op == "reshape":
            tensor = tensor.reshape(-1) if data.draw(st.booleans()) else tensor.reshape(1, -1)
        elif op == "int":
            tensor = tensor.to(torch.int32)
        elif op == "half":
            tensor = tensor.to(torch.float16)
        elif op == "scalar":
            tensor = torch.tensor(1.0)
        elif op == "huge":
            tensor = tensor * 1e30
        if op == "drop":
            values.pop(key)
        elif op == "rename":
            values.pop(key)
            values[key.replace(data.draw(st.sampled_from(["lora_A", "q_proj", "layers.0", "base_model."])),
                               data.draw(st.sampled_from(["lora_C", "k_proj", "layers.7", "", "x."])))] = tensor
        else:
            values[key] = tensor.contiguous()
    check_import(base, tmp_path, json.dumps(CONFIG).encode(), values)
