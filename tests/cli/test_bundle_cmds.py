"""``adaptc show``, ``export``, ``import-peft`` and ``compile --out`` against real bundles."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import adaptlang
from adaptlang.bundles import read_bundle

from .conftest import MULTITASK, TRACEBACK, invoke


class WordTokenizer:
    """One id per word: enough for the multitask prompt's text init."""

    def __call__(self, text):
        return {"input_ids": [1 + len(w) for w in text.split()]}


def tiny_llama(seed=0):
    from adaptlang.plan.models import load_model

    torch.manual_seed(seed)
    return load_model("tiny-llama", device="cpu")[0].eval()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The multitask spec's bundles on tiny Llama, with moved values."""
    torch.set_num_threads(1)
    adapted = adaptlang.apply(tiny_llama(), MULTITASK, tokenizer=WordTokenizer())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for task in adapted.tasks:
            for _, value in sorted(adapted.adapter_state_dict(task).items()):
                value.add_(torch.randn(value.shape, generator=gen) * 0.1)
    folder = tmp_path_factory.mktemp("bundles")
    return {path.stem: path for path in adapted.save(folder)}


def test_show_prints_a_deterministic_readable_manifest(runner, bundles):
    result = invoke(runner, "show", bundles["qa"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text == invoke(runner, "show", bundles["qa"]).stdout
    assert text.startswith("adaptlang bundle\n  task          qa = attn + mlp\n")
    assert "  parameters    20,224 trainable, 20,224 in the bundle\n" in text
    assert "  attn/model.layers.0.self_attn.q_proj/lora_A  float32  [8, 32]   sha256 " in text
    assert "spec source multitask.adapt\n  | # specs/multitask.adapt\n" in text
    assert "  | task qa        = attn + mlp\n" in text
    assert str(bundles["qa"].parent) not in text  # no machine paths: git textconv output


def test_show_verifies_tensors_unless_told_not_to(runner, bundles, tmp_path):
    tampered = tmp_path / "qa.safetensors"
    raw = bytearray(bundles["qa"].read_bytes())
    raw[-3] ^= 0x01
    tampered.write_bytes(bytes(raw))
    checked = invoke(runner, "show", tampered)
    assert checked.exit_code == 1 and "does not match its sha256 in the manifest" in checked.stderr
    header_only = invoke(runner, "show", tampered, "--no-verify")
    assert header_only.exit_code == 0 and header_only.stdout == invoke(runner, "show", bundles["qa"]).stdout


def test_show_json_is_the_manifest(runner, bundles):
    result = invoke(runner, "show", bundles["both"], "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == read_bundle(bundles["both"]).manifest


def test_show_lists_foreign_safetensors_and_refuses_garbage(runner, tmp_path):
    from safetensors.torch import save_file

    save_file({"base_model.model.x.lora_A.weight": torch.zeros(2, 3)}, str(tmp_path / "a.safetensors"),
              metadata={"format": "pt"})
    result = invoke(runner, "show", tmp_path / "a.safetensors")
    assert result.exit_code == 0
    assert result.stdout == ('safetensors file (not an adaptlang bundle)\n  metadata format: "pt"\n\ntensors (1)\n'
                             "  base_model.model.x.lora_A.weight  float32  [2, 3]\n")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01" * 40)
    result = invoke(runner, "show", tmp_path / "junk.safetensors")
    assert result.exit_code == 1
    assert f"{tmp_path / 'junk.safetensors'}: error: not a safetensors file" in result.stderr
    assert TRACEBACK not in result.output


def test_export_writes_a_peft_folder_or_names_the_deltas_at_fault(runner, bundles, tmp_path):
    from peft import PeftModel

    result = invoke(runner, "export", bundles["qa"], "--to", "peft", tmp_path / "qa")
    assert result.exit_code == 0, result.output
    assert "warning: PEFT holds one lora_dropout per adapter" in result.stderr
    base = tiny_llama()
    loaded = adaptlang.load(copy.deepcopy(base), bundles["qa"])
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "qa")).eval()
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5, rtol=0)
    refused = invoke(runner, "export", bundles["sentiment"], "--to", "peft", tmp_path / "s")
    assert refused.exit_code == 1
    assert "cannot be exported to PEFT: 'bottleneck' cannot be expressed" in refused.stderr
    assert TRACEBACK not in refused.output
    bad = invoke(runner, "export", bundles["qa"], "--to", "onnx", tmp_path / "x")
    assert bad.exit_code == 2


def test_import_peft_writes_a_spec_and_a_bundle(runner, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp_path / "my adapter"))
    result = invoke(runner, "import-peft", tmp_path / "my adapter", "--model", "tiny-llama", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["my_adapter.adapt", "my_adapter.safetensors"]
    assert invoke(runner, "check", tmp_path / "o" / "my_adapter.adapt", "--model", "tiny-llama").exit_code == 0
    assert invoke(runner, "show", tmp_path / "o" / "my_adapter.safetensors").exit_code == 0
    missing = invoke(runner, "import-peft", tmp_path / "nope", "--model", "tiny-llama")
    assert missing.exit_code == 2 and "no such folder" in missing.stderr


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A Hugging Face folder: tiny Llama weights as safetensors, and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama().save_pretrained(str(folder))
    words = ["<unk>"] + [f"w{i}" for i in range(59)] + ["Answer", "the", "question:", "now"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(folder))
    return folder


def test_compile_out_writes_the_plan_and_seeded_fresh_bundles(runner, model_folder, tmp_path):
    result = invoke(runner, "compile", MULTITASK, "--model", model_folder, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "and 4 fresh bundles: sentiment.safetensors, qa.safetensors, both.safetensors, qa_v2.safetensors" \
        in result.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["model"]["name"] == "tiny" and set(plan["tasks"]) == {"sentiment", "qa", "both", "qa_v2"}
    assert invoke(runner, "compile", MULTITASK, "--model", model_folder, "--out", tmp_path / "b").exit_code == 0
    for name in ("plan.json", "qa.safetensors", "qa_v2.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = read_bundle(tmp_path / "a" / "qa.safetensors").manifest
    assert manifest["plan_sha256"] == plan["plan_sha256"]
    # Fresh LoRA (B = 0) changes nothing: the loaded qa task equals the base model.
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(model_folder)).eval()
    loaded = adaptlang.load(copy.deepcopy(base), tmp_path / "a" / "qa.safetensors")
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, base(input_ids=ids).logits)


def test_compile_out_with_a_preset_writes_only_the_plan(runner, tmp_path):
    result = invoke(runner, "compile", MULTITASK, "--model", "tiny-llama", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["plan.json"]
    assert "no bundles: 'tiny-llama' is a preset (an architecture without weights)" in result.stderr
