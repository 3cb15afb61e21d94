"""Hostile PEFT adapter folders (issue 10, sections 3 and 4): a BundleError naming the file and field.

A valid LoRA folder is written by hand (``adapter_config.json`` plus
``adapter_model.safetensors`` with PEFT's keys); each case breaks one thing
in it. ``import_peft`` must raise a :class:`BundleError` (``adaptc
import-peft`` exits 1), write nothing, and never leak a ``TypeError``,
``ValueError``, ``IndexError``, ``re.error`` or ``RecursionError``.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from adaptlang.bundles import import_peft
from adaptlang.cli.main import app
from adaptlang.errors import AdaptError, BundleError

PREFIX = "base_model.model.model.layers.{}.self_attn.{}"
DEEP = 100_000


def base_config():
    return {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"],
            "rank_pattern": {}, "alpha_pattern": {}, "task_type": "CAUSAL_LM", "use_dora": False,
            "use_rslora": False, "bias": "none", "base_model_name_or_path": None}


def base_tensors():
    gen = torch.Generator().manual_seed(0)
    out = {}
    for layer in (0, 1):
        out[PREFIX.format(layer, "q_proj") + ".lora_A.weight"] = torch.randn(4, 32, generator=gen) * 0.1
        out[PREFIX.format(layer, "q_proj") + ".lora_B.weight"] = torch.randn(32, 4, generator=gen) * 0.1
    return out


def write_folder(folder, config_text, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(config_text, encoding="utf-8")
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def cfg(change):
    """A case editing the config dict."""
    def make():
        config = base_config()
        change(config)
        return json.dumps(config), base_tensors()
    return make


def cfg_text(text):
    return lambda: (text, base_tensors())


def tensors(change):
    def make():
        values = base_tensors()
        change(values)
        return json.dumps(base_config()), values
    return make


A0 = PREFIX.format(0, "q_proj") + ".lora_A.weight"
B0 = PREFIX.format(0, "q_proj") + ".lora_B.weight"


def put(key, value):
    return lambda c: c.__setitem__(key, value)


def poke(key, value):
    def change(t):
        t[key] = t[key].clone()
        t[key].view(-1)[3] = value
    return change


CASES = [
    # --- adapter_config.json: shape of the JSON
    ("config_nested_1e5", cfg_text('{"peft_type": "LORA", "x": ' + "[" * DEEP + "]" * DEEP + "}"),
     "nested deeper than 64 levels"),
    ("config_nested_100", cfg(put("x", json.loads("[" * 100 + "]" * 100))), "nested deeper than 64 levels"),
    ("config_not_json", cfg_text("{peft_type: LORA"), "adapter_config.json is not valid JSON"),
    ("config_a_list", cfg_text("[]"), "adapter_config.json is not a JSON object"),
    ("config_not_utf8", lambda: (b"\xff\xfe{}".decode("latin-1"), base_tensors()), "adapter_config.json"),
    ("config_nan_alpha", cfg_text(json.dumps(base_config()).replace('"lora_alpha": 8', '"lora_alpha": NaN')),
     "lora_alpha: nan is not a finite number"),
    # --- adapter_config.json: fields
    ("peft_type_missing", cfg(lambda c: c.pop("peft_type")), "field peft_type: Field required"),
    ("peft_type_int", cfg(put("peft_type", 3)), "field peft_type"),
    ("rank_pattern_string", cfg(put("rank_pattern", {"q_proj": "x"})), "field rank_pattern.q_proj"),
    ("rank_pattern_zero", cfg(put("rank_pattern", {"q_proj": 0})), "rank_pattern.q_proj: expected a positive"),
    ("rank_pattern_list", cfg(put("rank_pattern", ["q_proj"])), "field rank_pattern"),
    ("rank_pattern_bad_regex", cfg(put("rank_pattern", {"q_proj(": 4})), "is not a regular expression"),
    ("rank_pattern_redos", cfg(put("rank_pattern", {"(a+)+$": 4})), "repeats a group"),
    ("rank_pattern_long_key", cfg(put("rank_pattern", {"q" * 5000: 4})), "BUNDLE_MAX_PATTERN_CHARS"),
    # found in review: backtracking without a repeated group (12 quantifiers: over 100 s on a 40-character path)
    ("rank_pattern_redos_star_run", cfg(put("rank_pattern", {"a*" * 12 + "c": 2})), "BUNDLE_MAX_PATTERN_QUANTIFIERS"),
    ("alpha_pattern_redos_optional_run", cfg(put("alpha_pattern", {"a?" * 30 + "a" * 30: 2})),
     "BUNDLE_MAX_PATTERN_QUANTIFIERS"),
    ("feedforward_redos_star_run", cfg(lambda c: c.update(peft_type="IA3", feedforward_modules="a*" * 12 + "c")),
     "BUNDLE_MAX_PATTERN_QUANTIFIERS"),
    ("alpha_pattern_string", cfg(put("alpha_pattern", {"q_proj": "big"})), "field alpha_pattern.q_proj"),
    ("alpha_pattern_negative", cfg(put("alpha_pattern", {"q_proj": -3})),
     "alpha_pattern.q_proj: expected a number > 0"),
    ("alpha_pattern_1e308", cfg(put("alpha_pattern", {"q_proj": 1e308})), "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("alpha_pattern_null", cfg(put("alpha_pattern", {"q_proj": None})), "field alpha_pattern.q_proj"),
    ("r_minus_1", cfg(put("r", -1)), "field r: expected a positive whole number, found -1"),
    ("r_1e400", cfg_text(json.dumps(base_config()).replace('"r": 4', '"r": 1e400')), "r: inf is not a finite"),
    ("r_huge_int", cfg(put("r", 10 ** 30)), "field r: expected a positive whole number up to 1,048,576"),
    ("r_string", cfg(put("r", "x")), "field r: "),
    ("r_float", cfg(put("r", 4.5)), "field r: "),
    ("r_true", cfg(put("r", True)), "field r: "),
    ("lora_alpha_string", cfg(put("lora_alpha", "8")), "field lora_alpha"),
    ("lora_alpha_1e308", cfg(put("lora_alpha", 1e308)), "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("lora_alpha_zero", cfg(put("lora_alpha", 0)), "lora_alpha: expected a number > 0"),
    ("lora_dropout_2", cfg(put("lora_dropout", 2)), "lora_dropout: expected a probability"),
    ("target_modules_int", cfg(put("target_modules", 5)), "field target_modules"),
    ("target_modules_list_of_ints", cfg(put("target_modules", [1, 2])), "field target_modules[0]"),
    ("use_dora_string", cfg(put("use_dora", "yes")), "field use_dora"),
    ("feedforward_bad_regex", cfg(lambda c: c.update(peft_type="IA3", feedforward_modules="(")),
     "is not a regular expression"),
    ("prompt_text_huge", cfg(lambda c: c.update(peft_type="PROMPT_TUNING", prompt_tuning_init="TEXT",
                                                prompt_tuning_init_text="x" * 200_000)),
     "BUNDLE_MAX_PEFT_TEXT_CHARS"),
    ("num_submodules_string", cfg(lambda c: c.update(peft_type="PROMPT_TUNING", num_transformer_submodules="1")),
     "field num_transformer_submodules"),
    # --- adapter_model.safetensors
    ("tensor_nan", tensors(poke(B0, float("nan"))), "holds 1 NaN or infinite value(s)"),
    ("tensor_inf", tensors(poke(A0, float("inf"))), "holds 1 NaN or infinite value(s)"),
    ("tensor_int", tensors(lambda t: t.update({A0: torch.ones(4, 32, dtype=torch.int64)})),
     "expected floating-point values"),
    ("tensor_1d", tensors(lambda t: t.update({A0: torch.ones(4)})), "expected (r, in) and (out, r)"),
    ("tensor_0d", tensors(lambda t: t.update({A0: torch.tensor(1.0)})), "expected (r, in) and (out, r)"),
    ("tensor_rank_mismatch", tensors(lambda t: t.update({B0: torch.ones(32, 3)})), "expected (r, in) and (out, r)"),
    ("tensor_rank_0", tensors(lambda t: t.update({A0: torch.ones(0, 32), B0: torch.ones(32, 0)})),
     "with the same r >= 1"),
    ("tensor_wrong_width", tensors(lambda t: t.update({A0: torch.ones(4, 7)})), "tensor"),
    ("tensor_unknown_name", tensors(lambda t: t.update({"base_model.model.x.weird": torch.ones(2)})),
     "tensors adaptlang cannot import"),
    ("tensor_missing_B", tensors(lambda t: t.pop(B0)), "lacks lora_A or lora_B"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_peft_folder_is_a_bundle_error_naming_file_and_field(tmp_path, make, message):
    text, values = make()
    folder = write_folder(tmp_path / "peft", text, values)
    start = time.monotonic()
    with pytest.raises(BundleError) as err:
        import_peft(folder, "tiny-llama", tmp_path / "out", name="x")
    assert time.monotonic() - start < 10  # the bug was a hang for the ReDoS pattern
    assert str(folder) in str(err.value) and message in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


CLI_CASES = [c for c in CASES if c[0] in ("config_nested_1e5", "rank_pattern_string", "r_minus_1", "r_1e400",
                                           "alpha_pattern_null", "target_modules_int", "tensor_nan", "tensor_0d")]


@pytest.mark.parametrize("make,message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_import_peft_exits_1_on_a_hostile_folder(tmp_path, make, message):
    text, values = make()
    folder = write_folder(tmp_path / "peft", text, values)
    result = CliRunner().invoke(app, ["import-peft", str(folder), "--model", "tiny-llama", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_tensors_for_a_module_the_model_lacks_are_a_located_error(tmp_path):
    values = base_tensors()
    values["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.ones(4, 32)
    values["base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight"] = torch.ones(32, 4)
    folder = write_folder(tmp_path / "peft", json.dumps(base_config()), values)
    with pytest.raises(AdaptError, match="index 9 is out of range"):  # a BindError in the generated spec
        import_peft(folder, "tiny-llama", tmp_path / "out", name="x")
    assert not (tmp_path / "out").exists()


def test_the_unbroken_folder_imports(tmp_path):
    text, values = base_config(), base_tensors()
    folder = write_folder(tmp_path / "peft", json.dumps(text), values)
    spec, bundle = import_peft(folder, "tiny-llama", tmp_path / "out", name="x")
    assert spec.is_file() and bundle.is_file()


def test_real_pattern_keys_are_within_the_quantifier_limit():
    """PEFT's own keys (module paths) and the usual hand-written ones pass; a run of repetitions does not."""
    from adaptlang.bundles.peft_config import count_quantifiers
    from adaptlang.limits import BUNDLE_MAX_PATTERN_QUANTIFIERS

    real = ["q_proj", "model.layers.0.self_attn.q_proj", r"layers\.\d+\.self_attn\.q_proj", ".*q_proj",
            "^model.layers.[0-9]+.mlp", r"[*+?]\*"]
    assert [count_quantifiers(k) for k in real] == [0, 0, 1, 1, 1, 0]
    assert all(count_quantifiers(k) <= BUNDLE_MAX_PATTERN_QUANTIFIERS for k in real)
    assert count_quantifiers("a*" * 12 + "c") == 12 and count_quantifiers("x*?y+?") == 2


def test_an_export_of_a_forged_site_path_does_not_run_it_as_a_pattern():
    """A bundle's site path `a*a*...c` was put into a regex as is (over 100 s); now it is escaped."""
    import time

    from adaptlang.bundles.peft_common import pattern_key

    path = "a*" * 12 + "c"
    start = time.monotonic()
    key = pattern_key(path, {path: "Linear", "a" * 36: "Linear"})
    assert time.monotonic() - start < 5
    assert key == "^" + __import__("re").escape(path)
    assert pattern_key("model.layers.0.q_proj", {"model.layers.0.q_proj": "Linear"}) == "model.layers.0.q_proj"
