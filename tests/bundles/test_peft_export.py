"""PEFT export: ``PeftModel.from_pretrained`` on our adapter folder gives our outputs within 1e-5.

The reference is PEFT itself (peft 0.21 in the test environment): its
loader, its forward, and ``get_peft_model_state_dict`` for the key names.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

import adaptlang
from adaptlang.bundles import export_bundle_to_peft
from adaptlang.bundles.peft_export import PeftExportWarning
from adaptlang.errors import BundleError

LLAMA_LORA = """adaptlang 1
lora attn {{
    on      layers[*].self_attn.{{q_proj, v_proj}}, embed_tokens
    rank    4
    alpha   8
    variant {variant}
    rank    2 for layers[1].self_attn.q_proj
    alpha   3 for layers[0].**
}}
task t = {weight}attn
"""

GPT2_LORA = """adaptlang 1
lora attn {
    on      h[*].attn.c_attn, h[*].mlp.c_fc, wte
    rank    4
    alpha   8
    rank    2 for wte
}
task t = attn
"""

GPT2_BIAS = """adaptlang 1
lora attn {
    on      h[*].attn.c_attn
    rank    4
    variant rslora
    bias    true
}
task t = 2 * attn
"""

CASES = {
    "lora": ("tiny-llama", LLAMA_LORA.format(variant="lora", weight="")),
    "rslora_weighted": ("tiny-llama", LLAMA_LORA.format(variant="rslora", weight="0.5 * ")),
    "dora": ("tiny-llama", LLAMA_LORA.format(variant="dora", weight="")),
    "gpt2_conv1d_embedding": ("tiny-gpt2", GPT2_LORA),
    "gpt2_bias_weighted": ("tiny-gpt2", GPT2_BIAS),
    # lm_head is tied to wte: LoRA acts on each module's map, as PEFT's does (ensure_weight_tying off).
    "gpt2_tied_head": ("tiny-gpt2", "adaptlang 1\nlora h {\n    on lm_head, wte\n    rank 4\n}\ntask t = h\n"),
    "stacked": ("tiny-llama", """adaptlang 1
lora a {
    on   layers[*].self_attn.q_proj
    rank 4
}
lora b {
    on   layers[*].self_attn.{q_proj, k_proj}
    rank 2
    alpha 6
}
task t = a + 0.25 * b
"""),
    "ia3": ("tiny-llama", """adaptlang 1
ia3 one {
    on          layers[*].{self_attn.k_proj, mlp.down_proj}
    feedforward true for mlp.down_proj
}
ia3 two {
    on layers[*].self_attn.k_proj
}
task t = 0.5 * one + two
"""),
    "ia3_gpt2": ("tiny-gpt2", """adaptlang 1
ia3 scale {
    on          h[*].{attn.c_attn, mlp.c_proj}
    feedforward true for mlp.c_proj
}
"""),
    "prompt": ("tiny-llama", """adaptlang 1
prompt p {
    tokens 5
    init   text "answer the question"
}
"""),
}


def peft_outputs(base, folder, batch):
    """PEFT's logits for our adapter folder on a copy of the base."""
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("case", list(CASES))
def test_exported_adapters_give_our_outputs_in_peft(bt, tmp_path, case):
    preset, spec = CASES[case]
    base = bt.tiny(preset)
    adapted = adaptlang.apply(copy.deepcopy(base), spec, tokenizer=bt.tokenizer)
    bt.randomize(adapted, scale=0.2)
    batch = {k: v for k, v in bt.batch().items() if k != "labels"}
    with torch.no_grad():
        ours = adapted(**batch).logits
        plain = base(**batch).logits
    folder = adapted.export_peft(tmp_path / "peft", "t" if "t" in adapted.tasks else "default")
    theirs = peft_outputs(base, folder, batch)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert not torch.allclose(ours[:, -7:], plain, atol=1e-3)  # the adapter does something


def test_keys_and_config_match_what_peft_itself_saves(bt, tmp_path):
    from safetensors.torch import load_file

    base = bt.tiny()
    adapted = adaptlang.apply(copy.deepcopy(base), LLAMA_LORA.format(variant="lora", weight=""))
    folder = adapted.export_peft(tmp_path / "ours", "t")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["embed_tokens", "q_proj", "v_proj"]  # exact: no other such modules
    assert config["rank_pattern"] == {"model.layers.1.self_attn.q_proj": 2}
    assert config["alpha_pattern"] == {"model.layers.0.self_attn.q_proj": 3, "model.layers.0.self_attn.v_proj": 3}
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=config["target_modules"], rank_pattern=config["rank_pattern"],
        alpha_pattern=config["alpha_pattern"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model_state_dict(reference, save_embedding_layers=False)
    ours = load_file(str(folder / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_a_bundle_file_exports_without_a_model(bt, tmp_path):
    adapted = bt.apply(LLAMA_LORA.format(variant="lora", weight=""))
    bt.randomize(adapted)
    (path,) = adapted.save(tmp_path / "b")
    direct = adapted.export_peft(tmp_path / "direct", "t")
    from_file = export_bundle_to_peft(path, tmp_path / "file")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (direct / name).read_bytes() == (from_file / name).read_bytes(), name


REFUSED = {
    "adapter": ("""adaptlang 1
lora l {
    on layers[*].self_attn.q_proj
}
adapter bottleneck {
    after layers[*].mlp
    size  8
}
task t = l + bottleneck
""", ["'bottleneck'", "bottleneck adapters have no PEFT form"]),
    "sparse": ("""adaptlang 1
sparse sp {
    on      layers[0].mlp.up_proj
    density 1%
}
task t = sp
""", ["'sp'", "sparse deltas"]),
    "tune": ("""adaptlang 1
tune head {
    params lm_head.weight
}
task t = head
""", ["'head'", "tune"]),
    "mixed": ("""adaptlang 1
lora l {
    on layers[*].self_attn.q_proj
}
prompt p {
    tokens 3
}
task t = l + p
""", ["'l', 'p'", "one PEFT adapter holds one kind"]),
    "weighted_dora": (LLAMA_LORA.format(variant="dora", weight="0.5 * "), ["'attn'", "DoRA delta at weight 0.5"]),
    "ia3_both_sides": ("""adaptlang 1
ia3 out {
    on layers[*].mlp.down_proj
}
ia3 inp {
    on          layers[*].mlp.down_proj
    feedforward true
}
task t = out + inp
""", ["'out', 'inp'", "scales both the input and the output"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_tasks_peft_cannot_express_are_refused_naming_the_deltas(bt, tmp_path, case):
    spec, expected = REFUSED[case]
    adapted = bt.apply(spec)
    with pytest.raises(BundleError) as err:
        adapted.export_peft(tmp_path / "out", "t")
    text = str(err.value)
    assert "cannot be exported to PEFT" in text
    for part in expected:
        assert part in text, text
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_differing_dropouts_export_with_a_warning(bt, tmp_path):
    adapted = bt.apply(bt.multitask)  # qa = attn (dropout 0.05) + mlp (dropout 0)
    with pytest.warns(PeftExportWarning, match="exported 0; 'attn' \\(0.05\\) differ"):
        folder = adapted.export_peft(tmp_path / "qa", "qa")
    assert json.loads((folder / "adapter_config.json").read_text())["lora_dropout"] == 0.0
