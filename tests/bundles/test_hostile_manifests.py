"""Malformed safetensors headers and manifests (issue 10, section 3): a BundleError naming the file and field.

Each case edits one thing in a real bundle (with every hash it would break
recomputed, so only the edit is wrong) and checks that ``adaptlang.load``
raises a :class:`BundleError` (never ``RecursionError``, ``TypeError``,
``AttributeError`` or ``ValueError``) with the file and a piece of the
message, that the model is unchanged, and that ``adaptc show`` and
``adaptc export`` exit 1 (not 3, an internal error).
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from typer.testing import CliRunner

import adaptlang
from adaptlang.cli.main import app
from adaptlang.errors import BundleError
from adaptlang.plan.plan import compute_plan_sha256

SPEC = """adaptlang 1
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
task a = attn
"""

DEEP = 100_000


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from adaptlang.plan.models import load_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    adapted = adaptlang.apply(load_model("tiny-llama", device="cpu")[0].eval(), SPEC)
    (path,) = adapted.save(tmp_path_factory.mktemp("good"))
    return path.read_bytes()


def split(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header_text, data):
    text = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(text)) + text + data


def manifest_raw(change):
    """Replaces the manifest's JSON text by ``change(text)``."""
    def edit(raw):
        header, data = split(raw)
        header["__metadata__"]["adaptlang"] = change(header["__metadata__"]["adaptlang"])
        return join(json.dumps(header), data)
    return edit


def manifest(change, replan=False):
    """Edits the parsed manifest; ``replan`` recomputes the task plan's sha256 after the edit."""
    def edit(raw):
        header, data = split(raw)
        m = json.loads(header["__metadata__"]["adaptlang"])
        change(m)
        if replan and isinstance(m.get("task_plan"), dict):
            body = {k: v for k, v in m["task_plan"].items() if k != "plan_sha256"}
            m["task_plan"]["plan_sha256"] = compute_plan_sha256(body)
        header["__metadata__"]["adaptlang"] = json.dumps(m)
        return join(json.dumps(header), data)
    return edit


def header(change):
    def edit(raw):
        h, data = split(raw)
        change(h)
        return join(json.dumps(h), data)
    return edit


def first_tensor(h):
    return h[sorted(k for k in h if k != "__metadata__")[0]]


def setter(path, value):
    """``m[a][b]... = value`` for a path like ``("task_plan", "deltas", "attn", "sites", 0, "alpha")``."""
    def change(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return change


def deleter(*path):
    def change(m):
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]
    return change


SITE = ("task_plan", "deltas", "attn", "sites", 0)

CASES = [
    # --- the safetensors header
    ("header_nested_1e5", lambda raw: join('{"x":' + "[" * DEEP + "]" * DEEP + "}", b""),
     "nested deeper than 64 levels"),
    ("header_shape_is_5", header(lambda h: first_tensor(h).update(shape=5)), "bad shape or offsets"),
    ("header_offsets_null", header(lambda h: first_tensor(h).update(data_offsets=None)), "bad shape or offsets"),
    ("header_dtype_list", header(lambda h: first_tensor(h).update(dtype=["F32"])), "unsupported dtype"),
    ("header_entry_is_list", header(lambda h: h.update({"x": [1, 2]})), "lacks dtype, shape or data_offsets"),
    ("header_metadata_list", header(lambda h: h.update({"__metadata__": ["a"]})), "__metadata__ must map"),
    ("header_size_2_to_63", lambda raw: struct.pack("<Q", 2 ** 63) + raw[8:], "BUNDLE_MAX_HEADER_BYTES"),
    ("header_not_utf8", lambda raw: join(b"\xff\xfe" + b" " * 6, b""), "header is not JSON"),
    # --- the manifest's JSON text
    ("manifest_nested_1e5", manifest_raw(lambda t: "[" * DEEP + "]" * DEEP), "nested deeper than 64 levels"),
    ("manifest_nested_100", manifest_raw(lambda t: t[:-1] + ',"x":' + "[" * 100 + "]" * 100 + "}"),
     "nested deeper than 64 levels"),
    ("manifest_not_json", manifest_raw(lambda t: t[:-3]), "the adaptlang manifest is not valid JSON"),
    ("manifest_a_list", manifest_raw(lambda t: "[1, 2]"), "not a JSON object"),
    ("nan_in_plan", manifest_raw(lambda t: t.replace('"alpha":4.0', '"alpha":NaN')),
     "task_plan.deltas.attn.sites[0].alpha: nan is not a finite number"),
    ("infinity_in_plan", manifest_raw(lambda t: t.replace('"alpha":4.0', '"alpha":Infinity')),
     "sites[0].alpha: inf is not a finite number"),
    ("1e400_in_plan", manifest_raw(lambda t: t.replace('"alpha":4.0', '"alpha":1e400')),
     "sites[0].alpha: inf is not a finite number"),
    ("nan_in_weight", manifest_raw(lambda t: t.replace('"weight":1.0', '"weight":NaN')),
     "tasks.a.deltas[0].weight: nan"),
    # --- the manifest's fields, types swapped or deleted
    ("model_null", manifest(setter(("model",), None)), "manifest field model: "),
    ("model_fingerprint_int", manifest(setter(("model", "fingerprint"), 5)), "manifest field model.fingerprint"),
    ("structure_a_number", manifest(setter(("model", "structure"), 5)), "manifest field model.structure"),
    ("structure_values_ints", manifest(setter(("model", "structure"), {"a": 1})), "model.structure.a"),
    ("task_plan_null", manifest(setter(("task_plan",), None)), "manifest field task_plan: "),
    ("task_plan_string", manifest(setter(("task_plan",), "x")), "manifest field task_plan: "),
    ("task_int", manifest(setter(("task",), 5)), "manifest field task: "),
    ("task_path", manifest(setter(("task",), "../../x")), "manifest field task: "),
    ("tensors_a_list", manifest(setter(("tensors",), [])), "manifest field tensors: "),
    ("tensors_value_int", manifest(lambda m: m["tensors"].update({k: 5 for k in m["tensors"]})),
     "manifest field tensors."),
    ("bundle_format_string", manifest(setter(("bundle_format",), "1")), "manifest field bundle_format"),
    ("bundle_format_true", manifest(setter(("bundle_format",), True)), "manifest field bundle_format"),
    ("bundle_format_zero", manifest(setter(("bundle_format",), 0)), "manifest field bundle_format"),
    ("version_a_dict", manifest(setter(("adaptlang_version",), {})), "manifest field adaptlang_version"),
    ("missing_task_plan", manifest(deleter("task_plan")), "manifest field task_plan: Field required"),
    ("missing_spec", manifest(deleter("spec")), "manifest field spec: Field required"),
    ("dtype_int", manifest(setter(("dtype",), 5)), "manifest field dtype"),
    ("training_a_list", manifest(setter(("training",), [1])), "manifest field training"),
    ("training_bad_field", manifest(setter(("training",), {"objective": 5})), "training record is malformed"),
    ("spec_a_list", manifest(setter(("spec",), [])), "manifest field spec: "),
    ("spec_sources_int", manifest(setter(("spec",), {"path": "x", "sha256": "0", "sources": {"x": 5}})),
     "manifest field spec.sources.x"),
    ("spec_path_list", manifest(setter(("spec",), {"path": [], "sha256": "0", "sources": {}})),
     "manifest field spec.path"),
    ("spec_path_not_a_source", manifest(setter(("spec",), {"path": "y", "sha256": "0", "sources": {"x": ""}})),
     "manifest field spec.path: 'y' is not one of the recorded sources"),
    ("spec_overrides_string", manifest(lambda m: m["spec"].update(overrides={"r": "x"})),
     "manifest field spec.overrides.r"),
    # --- the task plan (its sha256 recomputed: only the edit is wrong)
    ("plan_rank_string", manifest(setter((*SITE, "rank"), "4"), replan=True), "manifest field task_plan: "),
    ("plan_sites_a_dict", manifest(setter(("task_plan", "deltas", "attn", "sites"), {}), replan=True),
     "not a valid adaptlang plan"),
    ("plan_deltas_null", manifest(setter(("task_plan", "deltas"), None), replan=True),
     "not a valid adaptlang plan"),
    ("plan_alpha_1e308", manifest(setter((*SITE, "alpha"), 1e308), replan=True), "BUNDLE_MAX_PROPERTY_MAGNITUDE"),
    ("plan_unknown_kind", manifest(setter(("task_plan", "deltas", "attn", "kind"), "warp"), replan=True),
     "not a valid adaptlang plan"),
    ("plan_two_tasks", manifest(lambda m: m["task_plan"]["tasks"].update(b=m["task_plan"]["tasks"]["a"]),
                                replan=True), "holds tasks ['a', 'b']"),
]


@pytest.fixture
def broken(good, tmp_path, request):
    make = request.param
    path = tmp_path / "a.safetensors"
    path.write_bytes(make(good))
    return path


@pytest.mark.parametrize("broken,message", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES],
                         indirect=["broken"])
def test_a_malformed_bundle_is_a_bundle_error_naming_file_and_field(broken, message):
    from adaptlang.plan.models import load_model

    torch.manual_seed(0)
    model = load_model("tiny-llama", device="cpu")[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BundleError) as err:
        adaptlang.load(model, broken)
    text = str(err.value)
    assert text.startswith(f"{broken}: error: ") and message in text, text
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


CLI_CASES = [c for c in CASES if c[0] in (
    "header_nested_1e5", "header_shape_is_5", "manifest_nested_1e5", "nan_in_plan", "model_null",
    "task_plan_null", "spec_sources_int", "spec_path_list", "structure_a_number", "plan_alpha_1e308")]


@pytest.mark.parametrize("command", ["show", "show --no-verify", "show --json", "export"])
@pytest.mark.parametrize("broken,message", [(c[1], c[2]) for c in CLI_CASES], ids=[c[0] for c in CLI_CASES],
                         indirect=["broken"])
def test_show_and_export_exit_1_on_a_malformed_bundle(broken, message, command, tmp_path):
    args = command.split() + [str(broken)] + (["--to", "peft", str(tmp_path / "out")] if command == "export" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
