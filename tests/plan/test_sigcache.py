"""The preset-signature disk cache: exact round trip, same plans, safe fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adaptlang.plan import sigcache
from adaptlang.plan.compiler import compile_plan
from adaptlang.plan.models import load_model
from adaptlang.plan.signature import load_preset_signature, signature_of

SPEC = "adaptlang 1\nlora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 4 }\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder and a cold in-process memo."""
    monkeypatch.setenv("ADAPTLANG_CACHE_DIR", str(tmp_path))
    load_preset_signature.cache_clear()
    yield tmp_path
    load_preset_signature.cache_clear()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-t5", "gpt2"])
def test_signature_round_trips_exactly(preset):
    sig = signature_of(*load_model(preset))
    assert sigcache.signature_from_dict(json.loads(json.dumps(sigcache.signature_to_dict(sig)))) == sig


def test_cached_signature_gives_the_same_plan(cache):
    cold = compile_plan(SPEC, "tiny-llama").to_json()
    files = list((cache / "signatures").glob("tiny-llama-*.json"))
    assert len(files) == 1
    load_preset_signature.cache_clear()
    assert sigcache.read_cached_signature("tiny-llama") is not None
    assert compile_plan(SPEC, "tiny-llama").to_json() == cold


def test_corrupt_or_tampered_cache_is_rebuilt(cache):
    reference = compile_plan(SPEC, "tiny-llama").to_json()
    (path,) = (cache / "signatures").glob("tiny-llama-*.json")
    data = json.loads(path.read_text())
    module = next(m for m in data["modules"] if m["params"])
    module["params"][0]["shape"] = [1, 1]  # the fingerprint no longer matches
    path.write_text(json.dumps(data))
    assert sigcache.read_cached_signature("tiny-llama") is None
    path.write_text("{not json")
    assert sigcache.read_cached_signature("tiny-llama") is None
    load_preset_signature.cache_clear()
    assert compile_plan(SPEC, "tiny-llama").to_json() == reference


def test_cache_can_be_turned_off_and_unwritable_folders_are_ignored(cache, monkeypatch):
    monkeypatch.setenv("ADAPTLANG_NO_CACHE", "1")
    compile_plan(SPEC, "tiny-llama")
    assert not (cache / "signatures").exists()
    monkeypatch.delenv("ADAPTLANG_NO_CACHE")
    (cache / "signatures").write_text("a file where the folder should be")
    load_preset_signature.cache_clear()
    assert compile_plan(SPEC, "tiny-llama").task("default")["trainable_params"] > 0


def test_warm_compile_imports_neither_torch_nor_transformers(cache):
    compile_plan(SPEC, "tiny-llama")  # warms the cache
    code = ("import sys, adaptlang; adaptlang.compile(%r, 'tiny-llama');"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))" % SPEC)
    env = {"ADAPTLANG_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


HEAD_SPEC = "adaptlang 1\ntune head { params classifier }\n"


def test_the_cache_keys_on_the_head_and_label_count(cache):
    bare = load_preset_signature("tiny-bert")
    two = load_preset_signature("tiny-bert", "sequence-classification", 2)
    five = load_preset_signature("tiny-bert", "sequence-classification", 5)
    assert (bare.cls, two.cls) == ("BertModel", "BertForSequenceClassification")
    assert len(set((cache / "signatures").glob("tiny-bert-*.json"))) == 3
    load_preset_signature.cache_clear()  # the next reads come from disk, each from its own file
    assert sigcache.read_cached_signature("tiny-bert") == bare
    assert sigcache.read_cached_signature("tiny-bert", "sequence-classification", 5) == five
    # tiny-bert is 32 wide: classifier 32 x labels + labels
    plan = compile_plan(HEAD_SPEC, "tiny-bert", num_labels=5)
    assert plan.delta("head")["params"] == 32 * 5 + 5
    assert compile_plan(HEAD_SPEC, "tiny-bert", head="sequence-classification").delta("head")["params"] == 32 * 2 + 2
