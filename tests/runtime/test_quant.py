"""NF4 / int8 block-wise quantization: error bounds, packing, sizes, QLoRA-style training, removal,
storage as frozen integer parameters (FSDP2 sharding itself: tests/distributed/test_quant_sharded.py)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.plan.accounting import quantized_bytes
from adaptlang.runtime.adapted import Adapted
from adaptlang.runtime.quant import (
    FLOAT_BITS, NF4_LEVELS, SCALE_BLOCK, QuantizedWeight, dynamic_map, pack_nibbles, storage_parameters,
    unpack_nibbles,
)
from adaptlang.runtime.site import SiteModule
from adaptlang.runtime.transaction import patch_model


def nf4_half_gap() -> float:
    """Half the largest gap between adjacent NF4 levels: 0.5 * (1 - 0.6962) = 0.1519.

    NF4 levels span [-1, 1] with both ends included, so every w / absmax in
    [-1, 1] is within half the largest gap of its nearest level.
    """
    levels = torch.tensor(NF4_LEVELS)
    return float((levels[1:] - levels[:-1]).max()) / 2


def dynamic_map_reach() -> float:
    """How far any value in [-1, 1] can be from the nearest dynamic-map code.

    The map holds 1.0 but its most negative code is -0.9930, so besides half
    the largest gap between codes the distance from -1 to the first code counts.
    """
    codes = dynamic_map()
    return max(float((codes[1:] - codes[:-1]).max()) / 2, float(codes[0] + 1), float(1 - codes[-1]))


def scale_error_bound(absmax: torch.Tensor) -> torch.Tensor:
    """Bound on |absmax - dequantized absmax| per block under double quantization.

    The scales are centred on their mean and quantized in blocks of 256, each
    divided by its own absmax S: the error is at most reach * S for every
    scale of that block (QLoRA §3 / bitsandbytes ``quantize_blockwise``).
    """
    centred = absmax - absmax.mean()
    pad = (-centred.numel()) % SCALE_BLOCK
    blocks = torch.cat([centred, centred.new_zeros(pad)]).view(-1, SCALE_BLOCK)
    per_block = blocks.abs().amax(dim=1) * dynamic_map_reach()
    return per_block.repeat_interleave(SCALE_BLOCK)[: absmax.numel()]


def block_absmax(weight: torch.Tensor, block: int) -> torch.Tensor:
    flat = weight.reshape(-1)
    pad = (-flat.numel()) % block
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, block).abs().amax(dim=1)


def element_bound(weight: torch.Tensor, block: int, fmt: str, double: bool) -> torch.Tensor:
    """Per-element bound |w - q(w)| <= step/2 * a + |a - â| (|level| <= 1), plus fp32 rounding.

    ``step/2`` is NF4's half largest gap, or 1/254 for int8 (round(127 w / a)).
    """
    a = block_absmax(weight, block)
    half_step = nf4_half_gap() if fmt == "nf4" else 1 / 254
    bound = half_step * a + (scale_error_bound(a) if double else 0)
    bound = bound.repeat_interleave(block)[: weight.numel()].view(weight.shape)
    return bound + 1e-6 * a.max()


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("block", [64, 37])
def test_round_trip_error_within_the_published_bound(fmt, double, block):
    gen = torch.Generator().manual_seed(0)
    # Normal weights with a few outliers and an all-zero block; 1,000 blocks > 256 scales.
    weight = torch.randn(250, 257, generator=gen) * 0.02
    weight[3, :10] = 0.5
    weight.view(-1)[:block] = 0
    q = QuantizedWeight(weight, fmt, block, double)
    error = (q.dequantize(torch.float32) - weight).abs()
    assert bool((error <= element_bound(weight, block, fmt, double)).all())
    assert float(error.view(-1)[:block].max()) == 0.0  # zeros stay zero
    assert error.max() > 0  # (it is lossy)


def test_nf4_levels_and_packing():
    # A block that holds exactly the 16 levels times 3 comes back exactly (no double quantization).
    weight = torch.tensor(NF4_LEVELS).repeat(4) * 3.0
    q = QuantizedWeight(weight.view(4, 16), "nf4", 16, False)
    assert torch.equal(q.dequantize(torch.float32).view(-1), weight)
    codes = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [0x12, 0xF0, 0x70]  # first code in the high nibble (bitsandbytes)
    assert torch.equal(unpack_nibbles(packed, 5), codes)
    assert dynamic_map().numel() == 256 and float(dynamic_map()[-1]) == 1.0


@pytest.mark.parametrize("fmt,block,double", [("nf4", 64, True), ("nf4", 64, False), ("int8", 128, True)])
def test_site_quantize_reports_bytes(fmt, block, double):
    site = SiteModule.wrap(nn.Linear(256, 96))
    sizes = site.quantize(fmt, block, double, "float32")
    assert sizes["bytes_before"] == 256 * 96 * 4
    # Exactly the plan's formula: packed codes + 1 byte per block + 4 per 256 blocks + the
    # one fp32 offset of the centred scales that double quantization keeps.
    assert sizes["bytes_after"] == quantized_bytes(256 * 96, fmt, block, double)
    assert "weight" not in site.base._parameters
    assert site.weight.shape == (96, 256) and site.in_features == 256  # passthrough still answers


def test_quantized_forward_dequantizes_to_compute_dtype():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    dense_bias = base.bias.detach().clone()
    site = SiteModule.wrap(base)
    site.quantize("nf4", 32, True, "bfloat16")
    x = torch.randn(2, 3, 64)
    w = site.quant.dequantize()  # bfloat16
    assert w.dtype == torch.bfloat16
    expected = F.linear(x.bfloat16(), w, dense_bias.bfloat16()).float()
    out = site(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_lora_on_a_quantized_linear_trains_and_only_lora_gets_gradients():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    base.requires_grad_(False)
    site = SiteModule.wrap(base)
    site.quantize("nf4", 16, True, "float32")
    part = site.add_part("a", "lora", {"rank": 4, "alpha": 8, "init": "gaussian"}, torch.Generator().manual_seed(0))
    site.set_active([("a", 1.0)])
    codes = site.quant.codes.clone()
    x, target = torch.randn(64, 32), torch.randn(64, 16)
    opt = torch.optim.Adam(part.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.mse_loss(site(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.95
    grads = {n for n, p in site.named_parameters() if p.grad is not None}
    assert grads == {"parts.a.lora_A", "parts.a.lora_B"}
    assert torch.equal(site.quant.codes, codes)


def test_quantized_state_dict_and_loading_a_dense_checkpoint():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    dense = {k: v.clone() for k, v in base.state_dict().items()}
    site = SiteModule.wrap(base)
    site.quantize("nf4", 64, True, "float32")
    keys = list(site.state_dict())
    assert keys[0] == "bias" and all(k.startswith("quant.") for k in keys[1:])
    with torch.no_grad():
        site.quant.store(torch.zeros(32, 64))
    site.load_state_dict(dense)  # a dense 'weight' is quantized into the storage
    q = QuantizedWeight(dense["weight"], "nf4", 64, True)
    assert torch.equal(site.quant.dequantize(), q.dequantize())


def test_errors():
    with pytest.raises(RuntimeApplyError, match="did you mean 'nf4'"):
        SiteModule.wrap(nn.Linear(8, 8)).quantize("nf5", 64, True, "float32")
    with pytest.raises(RuntimeApplyError, match="cannot quantize a LayerNorm"):
        SiteModule.wrap(nn.LayerNorm(8)).quantize("nf4", 64, True, "float32")
    site = SiteModule.wrap(nn.Linear(8, 8))
    site.quantize("int8", 64, False, "float32")
    site.add_part("a", "lora", {"rank": 2}, None)
    site.set_active([("a", 1.0)])
    with pytest.raises(RuntimeApplyError, match="quantized"):
        site.merge()


def qlora_plan() -> dict:
    """A hand-written plan dict (design.md fields): NF4 on two projections, LoRA on one of them."""
    lora = {"path": "model.layers.0.self_attn.q_proj", "module": "Linear", "in_features": 32, "out_features": 32,
            "params": 256, "rank": 4, "alpha": 8.0, "dropout": 0.0, "init": "kaiming", "variant": "lora",
            "bias": False}
    quant = [{"path": p, "module": "Linear", "param": "weight", "format": "nf4", "block": 64, "double": True,
              "compute": "float32"} for p in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj")]
    return {"deltas": {"attn": {"kind": "lora", "sites": [lora]}}, "base": {"quantize": quant},
            "tasks": {"t": {"deltas": [{"name": "attn", "weight": 1.0, "frozen": False}]}}}


@pytest.mark.parametrize("keep_base", [False, True])
def test_remove_restores_objects_with_dequantized_or_original_values(keep_base, rt):
    model = rt.tiny_llama()
    batch = rt.lm_batch()
    before = rt.capture_state(model)
    q_weight = model.model.layers[0].self_attn.q_proj.weight
    adapted = Adapted(model, None, patch_model(model, qlora_plan(), keep_base=keep_base))
    adapted.use("t")
    report = adapted.memory_report()
    assert report["bytes_before"] == (32 * 32 + 64 * 32) * 4  # q_proj and up_proj in fp32
    assert report["bytes_after"] < report["bytes_before"] / 6
    adapted(**batch).loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == [
        "model.layers.0.self_attn.q_proj.parts.attn.lora_A", "model.layers.0.self_attn.q_proj.parts.attn.lora_B"]
    assert adapted.merge()["not_merged"] == {"model.layers.0.self_attn.q_proj": "the base weight is quantized"}
    model.zero_grad(set_to_none=True)
    dequantized = model.model.layers[0].self_attn.q_proj.quant.dequantize(torch.float32).clone()
    adapted.remove()
    assert model.model.layers[0].self_attn.q_proj.weight is q_weight
    if keep_base:
        rt.assert_same_state(model, before)
    else:  # same objects, the values the quantized model was using
        assert torch.equal(q_weight.detach(), dequantized)
        assert not torch.equal(q_weight.detach(), before.values["model.layers.0.self_attn.q_proj.weight"])


# ------------------------------------------------------ storage as parameters (FSDP2)
@pytest.mark.parametrize("fmt,double", [("nf4", True), ("nf4", False), ("int8", True)])
def test_storage_is_frozen_flat_integer_parameters_with_the_old_state_dict(fmt, double):
    torch.manual_seed(0)
    q = QuantizedWeight(torch.randn(48, 40), fmt, 32, double)
    names = ["codes", "absmax_codes", "absmax_scale", "absmax_offset"] if double else ["codes", "absmax"]
    params = dict(q.named_parameters())
    assert list(params) == names and not list(q.buffers())  # FSDP2 shards parameters, not buffers
    for name, p in params.items():
        assert p.dim() == 1 and not p.requires_grad and not p.is_floating_point(), name
    with pytest.raises(RuntimeError, match="floating point"):
        q._parameters["codes"].requires_grad_(True)  # integer storage can never be trained by mistake
    # The state dict is as when these were buffers: same keys, fp32 scales, int8 / uint8 codes.
    state = q.state_dict()
    assert list(state) == names
    assert state["codes"].dtype == (torch.uint8 if fmt == "nf4" else torch.int8)
    for name in FLOAT_BITS & set(names):
        assert state[name].dtype == torch.float32 and q.state_tensors()[name].dtype == torch.float32
    assert sum(t.numel() * t.element_size() for t in state.values()) == q.nbytes() == q.nbytes(local=True)


def test_loading_fp32_scales_and_copies_keep_the_values():
    torch.manual_seed(0)
    weight = torch.randn(64, 48)
    q = QuantizedWeight(weight, "nf4", 64, True)
    expected = q.dequantize(torch.float32)
    other = QuantizedWeight(torch.zeros(64, 48), "nf4", 64, True)
    old_style = {k: v.clone() for k, v in q.state_dict().items()}  # fp32 scales, as older checkpoints hold
    assert old_style["absmax_scale"].dtype == torch.float32
    other.load_state_dict(old_style)
    assert torch.equal(other.dequantize(torch.float32), expected)
    for copied in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert torch.equal(copied.dequantize(torch.float32), expected)
        assert copied.state_dict()["absmax_offset"].dtype == torch.float32  # the hooks came along


def test_a_pickle_with_buffer_storage_loads_as_parameters():
    torch.manual_seed(0)
    q = QuantizedWeight(torch.randn(32, 32), "int8", 64, True)
    expected = q.dequantize(torch.float32)
    old = copy.deepcopy(q)  # made to look like the class before: fp32 buffers, no state-dict hooks
    old._buffers.update({k: v.clone() for k, v in old.state_tensors().items()})
    old._parameters.clear()
    old._state_dict_hooks.clear()
    old._load_state_dict_pre_hooks.clear()
    loaded = pickle.loads(pickle.dumps(old))
    assert not list(loaded.buffers()) and set(dict(loaded.named_parameters())) == set(q.state_tensors())
    assert torch.equal(loaded.dequantize(torch.float32), expected)
    assert loaded.state_dict()["absmax_scale"].dtype == torch.float32


@pytest.mark.parametrize("convert", ["half", "float64"])
def test_dtype_conversions_keep_the_storage_and_move_the_weight(convert):
    # .half() used to round fp32 scale buffers to fp16; integer-held scales are the format's and stay.
    torch.manual_seed(0)
    site = SiteModule.wrap(nn.Linear(64, 32))
    site.quantize("nf4", 32, True, "float32")
    before = {k: v.clone() for k, v in site.quant.state_dict().items()}
    exact = site.quant.dequantize(torch.float32)
    if convert == "half":
        site.half()
    else:
        site.to(torch.float64)
    after = site.quant.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    want = torch.float16 if convert == "half" else torch.float64
    assert site.quant.dtype == want and site.quant.dequantize().dtype == want
    assert torch.equal(site.quant.dequantize(torch.float32), exact)


def test_quantized_storage_is_never_trainable_in_an_adapted_model(rt):
    model = rt.tiny_llama()
    adapted = Adapted(model, None, patch_model(model, qlora_plan()))
    adapted.use("t")
    storage = [(n, p) for n, p in model.named_parameters() if ".quant." in n]
    assert len(storage) == 2 * 4  # two quantized sites: codes, absmax codes, scale, offset
    assert not any(p.requires_grad for _, p in storage)
    trainable = {n for n, _ in adapted.trainable_parameters()}
    assert trainable and not any(".quant." in n for n in trainable)
    # What FSDP1 users pass as ignored_states (it cannot flatten integer tensors): exactly the storage.
    assert [id(p) for p in storage_parameters(model)] == [id(p) for _, p in storage]
