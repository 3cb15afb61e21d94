"""PEFT import: PEFT -> .adapt + bundle -> ours, and back to PEFT, with equal outputs.

Adapters are made by PEFT itself (``get_peft_model`` + ``save_pretrained``)
with random values, so the reference is PEFT's own forward.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model

import adaptlang
from adaptlang.bundles import import_peft, read_bundle
from adaptlang.errors import BundleError
from adaptlang.syntax.format import format_text

CONFIGS = {
    "lora_patterns_embedding": lambda: LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens", "up_proj"],
        rank_pattern={"model.layers.1.self_attn.q_proj": 2}, alpha_pattern={"up_proj": 3}, task_type="CAUSAL_LM"),
    "dora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                               task_type="CAUSAL_LM"),
    "rslora_bias": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj"], use_rslora=True,
                                      lora_bias=True, lora_dropout=0.1, task_type="CAUSAL_LM"),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"],
                             task_type="CAUSAL_LM"),
    "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
}


def make_peft_adapter(base, config, folder, seed=0):
    """Saves a PEFT adapter with random trainable values; returns PEFT's logits on a batch."""
    model = get_peft_model(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(folder))
    return model


def logits(model, bt):
    with torch.no_grad():
        return model(input_ids=bt.batch()["input_ids"]).logits


@pytest.mark.parametrize("case", list(CONFIGS))
def test_peft_to_ours_and_back_keeps_outputs(bt, tmp_path, case):
    base = bt.tiny()
    reference = logits(make_peft_adapter(base, CONFIGS[case](), tmp_path / "peft"), bt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec, bundle = import_peft(tmp_path / "peft", copy.deepcopy(base), tmp_path / "ours", name=case)
    assert (spec.name, bundle.name) == (f"{case}.adapt", f"{case}.safetensors")
    text = spec.read_text()
    assert format_text(text, spec.name) == text  # written formatted
    assert read_bundle(bundle).manifest["spec"]["sources"] == {spec.name: text}
    loaded = adaptlang.load(copy.deepcopy(base), bundle)
    torch.testing.assert_close(logits(loaded, bt), reference, atol=1e-5, rtol=0)
    # ... and back to PEFT.
    folder = loaded.export_peft(tmp_path / "back", case)
    again = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    torch.testing.assert_close(logits(again, bt), reference, atol=1e-5, rtol=0)
    # The spec alone (applied fresh, then the bundle's values) is the same model too.
    applied = adaptlang.apply(copy.deepcopy(base), spec, tokenizer=bt.tokenizer)
    applied.load_adapter_state_dict(read_bundle(bundle).tensors, case)
    torch.testing.assert_close(logits(applied, bt), reference, atol=1e-5, rtol=0)


def test_the_written_spec_reads_like_a_hand_written_one(bt, tmp_path):
    make_peft_adapter(bt.tiny(), CONFIGS["lora_patterns_embedding"](), tmp_path / "peft")
    spec, _ = import_peft(tmp_path / "peft", "tiny-llama", tmp_path / "ours", name="my-adapter")
    assert spec.read_text() == """# Imported from the PEFT adapter 'peft' (LORA).
adaptlang 1
model "tiny-llama"

lora my_adapter_lora {
    on      /model.embed_tokens, /model.layers[0, 1].mlp.up_proj, /model.layers[0, 1].self_attn.{q_proj, v_proj}
    rank    4
    alpha   8
    rank    2 for /model.layers[1].self_attn.q_proj
    alpha   3 for /model.layers[0, 1].mlp.up_proj
}

task my_adapter = my_adapter_lora
"""


def test_pickled_and_foreign_folders_are_refused(bt, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(BundleError, match="adapter_model.bin is a pickle, which adaptlang never loads"):
        import_peft(folder, "tiny-llama", tmp_path / "out")
    other = tmp_path / "loha"
    make_peft_adapter(bt.tiny(), CONFIGS["dora"](), other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    with pytest.raises(BundleError, match="PEFT type LOHA cannot be imported"):
        import_peft(other, "tiny-llama", tmp_path / "out")
    with pytest.raises(BundleError, match="no adapter_config.json"):
        import_peft(tmp_path, "tiny-llama", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_adapter_for_another_model_is_refused_before_writing(bt, tmp_path):
    make_peft_adapter(bt.tiny(), CONFIGS["dora"](), tmp_path / "peft")
    with pytest.raises(adaptlang.BindError):
        import_peft(tmp_path / "peft", "tiny-gpt2", tmp_path / "out")
    assert not (tmp_path / "out" / "peft.adapt").exists()
