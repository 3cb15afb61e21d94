"""Hostile model folders: a config.json that is huge, deep, not JSON or names absurd sizes is a clear UsageError.

Issue 10, section 4: a ``config.json`` nested 1e5 deep ended in a
RecursionError (exit 3); ``num_hidden_layers`` 1e8 built layers on meta for
ever. Model-folder errors are usage errors (exit 2), like a folder without
``config.json``; each names the file, and the field and limit when one is
past. The time bound is generous: the large sizes used to hang.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from adaptlang.errors import UsageError
from adaptlang.plan.models import load_model

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 128, "max_position_embeddings": 64}
FAST = 10.0  # seconds


def _json(root: Path, **changes) -> None:
    (root / "config.json").write_text(json.dumps({**LLAMA, **changes}), encoding="utf-8")


def _text(root: Path, text: str) -> None:
    (root / "config.json").write_text(text, encoding="utf-8")


def _raw(root: Path, data: bytes) -> None:
    (root / "config.json").write_bytes(data)


def _nested(root: Path, depth: int) -> None:
    _text(root, '{"model_type": "llama", "x": ' + "[" * depth + "]" * depth + "}")


# id, a function writing the folder, a piece of the message
CASES = [
    ("nested-1e5", lambda r: _nested(r, 100_000), "is nested too deep (more than 64 levels, MAX_CONFIG_DEPTH)"),
    ("nested-500", lambda r: _nested(r, 500), "is nested too deep at 'x"),
    ("nested-objects-1e5", lambda r: _text(r, '{"model_type": "llama", "x": ' + '{"a": ' * 100_000 + "1"
                                           + "}" * 100_000 + "}"), "MAX_CONFIG_DEPTH"),
    ("layers-1e8", lambda r: _json(r, num_hidden_layers=100_000_000),
     "'num_hidden_layers' is 100000000, past the limit of 10,000 (MAX_CONFIG_LAYERS)"),
    ("layers-1e8-float", lambda r: _json(r, num_hidden_layers=1e8), "past the limit of 10,000 (MAX_CONFIG_LAYERS)"),
    ("layers-400-digits", lambda r: _text(r, json.dumps(LLAMA)[:-1] + ', "n_layer": 1' + "0" * 400 + "}"),
     "'n_layer' is 100000000000... (401 digits), past the limit"),
    ("hidden-1e12", lambda r: _json(r, hidden_size=10**12), "'hidden_size' is 1000000000000, past the limit of "
     "268,435,456 (MAX_CONFIG_WIDTH)"),
    ("vocab-1e12", lambda r: _json(r, vocab_size=10**12), "'vocab_size' is 1000000000000"),
    ("experts-1e8", lambda r: _json(r, model_type="mixtral", num_local_experts=10**8), "'num_local_experts'"),
    ("nested-text-config-layers", lambda r: _json(r, text_config={"num_hidden_layers": 10**8}),
     "'text_config.num_hidden_layers' is 100000000"),
    ("layers-nan", lambda r: _text(r, json.dumps(LLAMA)[:-1] + ', "num_hidden_layers": NaN}'), "is nan, past"),
    ("layers-infinity", lambda r: _text(r, json.dumps(LLAMA)[:-1] + ', "num_hidden_layers": Infinity}'),
     "is inf, past"),
    ("not-json", lambda r: _text(r, "{not json"), "not JSON"),
    ("json-list", lambda r: _text(r, "[1, 2]"), "is not a JSON object (it is a list)"),
    ("json-string", lambda r: _text(r, '"llama"'), "is not a JSON object (it is a str)"),
    ("json-null", lambda r: _text(r, "null"), "is not a JSON object (it is a NoneType)"),
    ("not-utf8", lambda r: _raw(r, b'{"model_type": "\xff"}'), "is not UTF-8 text"),
    ("empty", lambda r: _text(r, ""), "not JSON"),
    ("config-is-a-directory", lambda r: (r / "config.json").mkdir(), "no config.json"),
    ("config-is-a-fifo", lambda r: os.mkfifo(r / "config.json"), "no config.json"),
    ("config-link-loop", lambda r: (r / "config.json").symlink_to(r / "config.json"), "no config.json"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_config_json_is_a_usage_error(tmp_path, make, message):
    make(tmp_path)
    start = time.perf_counter()
    with pytest.raises(UsageError) as err:
        load_model(str(tmp_path))
    assert time.perf_counter() - start < FAST
    rendered = err.value.render()
    assert err.value.exit_code == 2 and message in rendered, rendered
    assert str(tmp_path) in rendered


def test_a_config_json_past_the_size_limit(tmp_path, monkeypatch):
    import adaptlang.plan.model_config as model_config

    monkeypatch.setattr(model_config, "MAX_CONFIG_BYTES", 1000)
    _json(tmp_path, padding="x" * 2000)
    with pytest.raises(UsageError, match=r"is too big: .* past the limit of 1,000 bytes for a config.json "
                                         r"\(MAX_CONFIG_BYTES\)"):
        load_model(str(tmp_path))


def test_sizes_at_real_scale_still_build(tmp_path):
    _json(tmp_path, vocab_size=262_144, max_position_embeddings=10_485_760, num_labels=21_843)
    model, _ = load_model(str(tmp_path))
    assert model.config.vocab_size == 262_144


# --- found in review: label counts (transformers builds an id2label entry per label) ------------

def test_num_labels_past_the_limit_is_refused_from_every_source(tmp_path):
    import json

    from adaptlang.bundles.lockfile import parse_lock
    from adaptlang.limits import MAX_NUM_LABELS

    for bad in (MAX_NUM_LABELS + 1, 10 ** 12, 0, "2", True):
        with pytest.raises(UsageError, match="num_labels"):
            load_model("tiny-llama", num_labels=bad)
    _json(tmp_path, num_labels=10_000_000)
    with pytest.raises(UsageError, match=r"'num_labels' is 10000000, past the limit of 1,000,000 \(MAX_NUM_LABELS\)"):
        load_model(str(tmp_path))
    from adaptlang.bundles.lockfile import build_lock

    spec = tmp_path / "s.adapt"
    spec.write_text("adaptlang 1\nlora a {\n    on q_proj\n    rank 2\n}\n", encoding="utf-8")
    lock = build_lock([spec], ["tiny-llama"], tmp_path, "sequence-classification", 2)
    parse_lock(json.dumps(lock), "adapt.lock")  # as written: fine
    lock["specs"]["s.adapt"]["models"]["tiny-llama"]["num_labels"] = 10 ** 12
    with pytest.raises(UsageError, match=r"MAX_NUM_LABELS"):
        parse_lock(json.dumps(lock), "adapt.lock")
