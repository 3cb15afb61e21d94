"""Block-wise weight quantization of a frozen base: NF4 (QLoRA) and int8, in pure torch.

NF4 (Dettmers et al. 2023, "QLoRA"): the flattened weight is cut into blocks
of ``block`` values; each block keeps its absmax ``a`` and every value is
stored as the index of the nearest of 16 levels (:data:`NF4_LEVELS`, the
normal-float code of bitsandbytes) to ``w / a``. Two 4-bit codes share a
byte, the first in the high nibble (bitsandbytes' order).

int8: the same blocks, each value stored as ``round(127 * w / a)`` (int8).

Double quantization (``double``, QLoRA §3): the fp32 absmax vector is
centred on its mean (one fp32 offset) and quantized block-wise again, in
blocks of 256, to 8-bit codes of bitsandbytes' signed dynamic map
(:func:`dynamic_map`), each block keeping one fp32 absmax. Storage per
weight: packed codes, one byte per block, 4 bytes per 256 blocks, 4 bytes
of offset.

Dequantization happens on the fly in the site's forward, to the ``compute``
dtype. With CUDA and bitsandbytes installed, NF4 on a CUDA weight uses
bitsandbytes' kernels (same format); the pure-torch path stays the reference.

Storage is frozen, flat (1-D) *parameters* of integer dtypes, so that PyTorch
FSDP2 (``fully_shard``), which shards parameters only, splits the quantized
base across ranks as FSDP-QLoRA does with bitsandbytes' ``quant_storage``
(see :class:`QuantizedWeight` for the layout and why).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean

__all__ = [
    "FLOAT_BITS", "FORMATS", "NF4_LEVELS", "STORAGE", "QuantizedWeight", "dequantize_blockwise", "dynamic_map",
    "quantize_blockwise", "storage_parameters",
]

FORMATS = ("nf4", "int8")
#: QLoRA's NF4 levels (bitsandbytes ``get_4bit_type("nf4")``), ascending.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
#: Scales per block of the second quantization (QLoRA, bitsandbytes).
SCALE_BLOCK = 256
_COMPUTE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Every tensor a :class:`QuantizedWeight` may store, in state-dict order.
STORAGE = ("codes", "absmax", "absmax_codes", "absmax_scale", "absmax_offset")
#: The fp32 ones among them, held as their int32 bit patterns (:class:`QuantizedWeight`).
FLOAT_BITS = frozenset({"absmax", "absmax_scale", "absmax_offset"})


def dynamic_map() -> torch.Tensor:
    """Returns bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``), ascending (256,).

    Dynamic exponent, 7 exponent bits at most: for ``i = 0..6`` the means of
    ``2**i + 1`` points evenly spaced in [0.1, 1], times ``10**(i - 6)``, with
    both signs; then 0 and 1.
    """
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (-6 + i) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def _nf4_levels() -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32)


def _nearest(normalized: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Returns the index of the nearest level (ascending ``levels``) for each value."""
    midpoints = (levels[1:] + levels[:-1]) / 2  # decision boundaries
    return torch.bucketize(normalized, midpoints.to(normalized.device)).to(torch.uint8)


def _blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    """Pads a flat tensor with zeros to whole blocks: (n_blocks, block)."""
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def quantize_blockwise(values: torch.Tensor, block: int, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes to the nearest of ``levels`` after dividing each block by its absmax.

    Args:
        values: Any shape; flattened.
        block: Values per block.
        levels: Ascending code values in [-1, 1].

    Returns:
        ``(codes, absmax)``: uint8 codes (numel padded to whole blocks), fp32 absmax (n_blocks,).
    """
    blocks = _blocks(values.detach().reshape(-1).float(), block)  # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    # An all-zero block divides by 1 instead: its values are 0, nearest level 0.
    normalized = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax)).unsqueeze(1)
    return _nearest(normalized, levels).reshape(-1), absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``levels[codes] * absmax`` per block (flat, padded)."""
    n_blocks = absmax.numel()
    vals = levels.to(absmax.device)[codes.long()].view(n_blocks, -1)  # (n_blocks, block)
    return (vals * absmax.unsqueeze(1)).reshape(-1)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Packs 4-bit codes two per byte, the first in the high nibble."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``n`` codes."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]


class QuantizedWeight(nn.Module):
    """A frozen weight in block-wise quantized storage, dequantized on demand.

    Stands in for the base module's weight while a site is quantized; it
    reports the original ``shape`` and ``dtype`` so that code reading
    ``module.weight.shape`` keeps working.

    Storage (:data:`STORAGE`), all flat 1-D frozen parameters
    (``requires_grad=False``): ``codes`` (uint8 ``(ceil(n_pad / 2),)`` packed for
    NF4, int8 ``(n_pad,)`` for int8, ``n_pad`` = numel padded to whole
    blocks), and either ``absmax`` (fp32 ``(n_blocks,)``) or ``absmax_codes``
    (uint8 ``(n_blocks,)``) + ``absmax_scale`` (fp32 ``(ceil(n_blocks /
    256),)``) + ``absmax_offset`` (fp32 ``(1,)``).

    Why parameters, not buffers: FSDP2 (``fully_shard``) shards parameters
    only; as buffers every rank would hold the whole quantized base. FSDP2
    shards each parameter on dim 0 and all-gathers a group of mixed dtypes as
    bytes, so one parameter per tensor works and keeps the state-dict keys.

    Why integer dtypes only: the fp32 tensors (:data:`FLOAT_BITS`) are held
    as their int32 bit patterns (same size, same shard boundaries). A
    floating parameter would be cast by FSDP2's ``MixedPrecisionPolicy
    (param_dtype=bfloat16)`` and by ``model.half()`` (bf16 scales change
    every dequantized value), and could be given ``requires_grad``; an
    integer one cannot (``model.requires_grad_(True)`` raises on it, as on
    bitsandbytes' ``Params4bit``). ``state_dict()`` shows them as fp32 and
    ``load_state_dict`` takes fp32 (hooks below), so checkpoints are as before;
    :meth:`state_tensors` gives them as fp32 too. (``quant.absmax`` is the int32
    parameter itself: FSDP2 reads parameters with ``getattr``, so no attribute
    may answer with anything else.)

    Every read goes through ``self._parameters`` at call time: FSDP2 swaps
    the parameter objects (sharded DTensors between forwards, unsharded plain
    tensors during the owning ``fully_shard`` module's forward). Quantize
    before ``fully_shard``; :meth:`store` after it would replace the sharded
    parameters. FSDP1 flattens floating tensors only: give it
    ``ignored_states=storage_parameters(model)``.

    Args:
        weight: The weight to quantize (any float dtype).
        fmt: ``nf4`` or ``int8``.
        block: Values per block.
        double: Quantize the absmax scales too.
        compute: dtype name to dequantize to in the forward (``float32``, ``bfloat16``).
    """

    def __init__(self, weight: torch.Tensor, fmt: str = "nf4", block: int = 64, double: bool = True,
                 compute: str = "float32"):
        super().__init__()
        if fmt not in FORMATS:
            raise RuntimeApplyError(Diagnostic(f"unknown quantization format '{fmt}'", hint=did_you_mean(fmt, FORMATS)))
        if compute not in _COMPUTE:
            raise RuntimeApplyError(Diagnostic(f"unknown compute dtype '{compute}'",
                                               hint=did_you_mean(compute, _COMPUTE)))
        if int(block) < 1:
            raise RuntimeApplyError(f"quantization block must be positive, got {block}")
        self.fmt, self.block, self.double = fmt, int(block), bool(double)
        self.compute_dtype = _COMPUTE[compute]
        self.shape = torch.Size(weight.shape)
        self.dtype = weight.dtype
        self._bnb_state: Any = None
        self.register_state_dict_post_hook(_float_views)
        self.register_load_state_dict_pre_hook(_float_bits)
        self.store(weight)

    @property
    def device(self) -> torch.device:
        """Where the storage lives."""
        return self._parameters["codes"].device

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Returns the storage as ``state_dict()`` shows it: name -> tensor (fp32 views of the bit patterns)."""
        return {name: self._read(name) for name in STORAGE if self._parameters.get(name) is not None}

    def _read(self, name: str) -> torch.Tensor:
        """Returns a stored tensor now in the slot, fp32 for :data:`FLOAT_BITS` (FSDP2 may have swapped it)."""
        tensor = self._parameters[name]
        return tensor.view(torch.float32) if name in FLOAT_BITS else tensor

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        """Stores ``tensor`` flat as a frozen parameter (fp32 ones as int32 bits)."""
        flat = tensor.detach().reshape(-1)
        if name in FLOAT_BITS:
            flat = flat.to(torch.float32).contiguous().view(torch.int32)
        self._parameters[name] = nn.Parameter(flat, requires_grad=False)

    def store(self, weight: torch.Tensor) -> None:
        """(Re)quantizes ``weight`` into this storage (its shape must match)."""
        if tuple(weight.shape) != tuple(self.shape):
            raise RuntimeApplyError(f"weight of shape {tuple(weight.shape)} does not fit quantized storage "
                                    f"of shape {tuple(self.shape)}")
        for name in STORAGE:
            self._parameters.pop(name, None)
        self._bnb_state = None
        if self.fmt == "nf4" and _use_bitsandbytes(weight):
            self._store_bnb(weight)
            return
        levels = _nf4_levels() if self.fmt == "nf4" else None
        if levels is not None:
            codes, absmax = quantize_blockwise(weight, self.block, levels.to(weight.device))
            codes = pack_nibbles(codes)
        else:
            blocks = _blocks(weight.detach().reshape(-1).float(), self.block)
            absmax = blocks.abs().amax(dim=1)
            safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax)).unsqueeze(1)
            codes = torch.round(blocks / safe * 127).to(torch.int8).reshape(-1)
        self._put("codes", codes)
        if self.double:
            offset = absmax.mean()
            centred_codes, scale = quantize_blockwise(absmax - offset, SCALE_BLOCK, dynamic_map().to(absmax.device))
            self._put("absmax_codes", centred_codes[: absmax.numel()].clone())  # not the padded storage
            self._put("absmax_scale", scale)
            self._put("absmax_offset", offset)
        else:
            self._put("absmax", absmax)

    def block_absmax(self) -> torch.Tensor:
        """Returns each block's absmax as used to dequantize: fp32 (n_blocks,), after double quantization."""
        if not self.double:
            return self._read("absmax")
        absmax_codes, scale = self._read("absmax_codes"), self._read("absmax_scale")
        n = absmax_codes.numel()
        pad = (-n) % SCALE_BLOCK
        codes = torch.cat([absmax_codes, absmax_codes.new_zeros(pad)]) if pad else absmax_codes
        centred = dequantize_blockwise(codes, scale, dynamic_map().to(scale.device))
        return centred[:n] + self._read("absmax_offset")

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Returns the weight, dequantized: its original shape, in ``dtype`` (default: compute dtype)."""
        dtype = dtype or self.compute_dtype
        codes = self._parameters["codes"]
        if self._bnb_state is not None:
            import bitsandbytes.functional as bnbf

            # bitsandbytes packs to ((n + 1) // 2, 1); the parameter is kept flat for FSDP2.
            return bnbf.dequantize_4bit(codes.view(-1, 1), self._bnb_state).to(dtype).view(self.shape)
        numel = math.prod(self.shape)
        absmax = self.block_absmax()
        if self.fmt == "nf4":
            flat = dequantize_blockwise(unpack_nibbles(codes, absmax.numel() * self.block), absmax, _nf4_levels())
        else:
            flat = (codes.float().view(absmax.numel(), -1) * (absmax / 127).unsqueeze(1)).reshape(-1)
        return flat[:numel].view(self.shape).to(dtype)

    def nbytes(self, local: bool = False) -> int:
        """Returns the bytes of the quantized storage (codes and scales).

        Args:
            local: Only the share this process holds: for FSDP2-sharded (DTensor)
                storage, its local shard (without FSDP2's padding); else all of it.
        """
        total = 0
        for name in STORAGE:
            tensor = self._parameters.get(name)
            if tensor is None:
                continue
            if local and hasattr(tensor, "to_local"):  # a DTensor: this rank's shard
                tensor = tensor.to_local()
            total += tensor.numel() * tensor.element_size()
        state = self._bnb_state
        if state is not None:  # bitsandbytes keeps the scales in its QuantState
            nested = getattr(state, "state2", None)
            for tensor in (state.absmax, getattr(state, "offset", None), getattr(nested, "absmax", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def _store_bnb(self, weight: torch.Tensor) -> None:
        """NF4 through bitsandbytes' CUDA kernels (same format as the reference path).

        The scales stay in bitsandbytes' ``QuantState`` (not a parameter, so
        replicated under FSDP2): such a site's ``state_dict()`` holds the packed
        codes only, and ``.to()`` does not move the state.
        """
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(weight.detach().contiguous(), blocksize=self.block,
                                           compress_statistics=self.double, quant_type="nf4")
        self._put("codes", packed)
        self._bnb_state = state

    def _apply(self, fn: Any, recurse: bool = True) -> "QuantizedWeight":
        # ``model.to(torch.float64)`` / ``.half()`` convert every floating tensor of the model; the
        # weight this storage stands in for must follow (its reported dtype, the dtype it computes
        # in), else the site would compute in the old dtype and ``remove()`` would put it back.
        # (The storage itself is integer, so those calls leave it as it is.)
        out = super()._apply(fn, recurse)
        device = self._parameters["codes"].device
        self.dtype = fn(torch.empty(0, dtype=self.dtype, device=device)).dtype
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype, device=device)).dtype
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A whole-model pickle from before the storage became parameters holds it as buffers.
        super().__setstate__(state)
        old = {name: self._buffers.pop(name) for name in STORAGE if name in self._buffers}
        for name, tensor in old.items():
            self._put(name, tensor)
        if old:
            self.register_state_dict_post_hook(_float_views)
            self.register_load_state_dict_pre_hook(_float_bits)

    def extra_repr(self) -> str:
        return (f"fmt={self.fmt}, shape={tuple(self.shape)}, block={self.block}, double={self.double}, "
                f"compute={self.compute_dtype}")


def storage_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Returns the storage parameters of every :class:`QuantizedWeight` in ``model`` (model order).

    For engines that cannot hold integer parameters: FSDP1 (``FullyShardedDataParallel``)
    flattens floating tensors only, so pass ``ignored_states=storage_parameters(model)``;
    it then leaves the quantized base whole on every rank (as with buffers). FSDP2
    (``fully_shard``) shards them and needs nothing.
    """
    return [p for m in model.modules() if isinstance(m, QuantizedWeight) for p in m._parameters.values()
            if p is not None]


def _float_views(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook: the int32 bit patterns of :data:`FLOAT_BITS` as the fp32 they hold.

    Why: checkpoints keep the dtypes they had when these were fp32 buffers. A
    view, not a copy (a DTensor under FSDP2 stays a DTensor, same shards).
    """
    for name in FLOAT_BITS:
        value = state_dict.get(prefix + name)
        if value is not None and value.dtype == torch.int32:
            state_dict[prefix + name] = value.view(torch.float32)


def _float_bits(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """Load pre-hook, the inverse of :func:`_float_views`: floating values become int32 bit patterns.

    Older checkpoints' bitsandbytes codes of shape ``(n, 1)`` are flattened as the storage now is.
    """
    for name in STORAGE:
        key = prefix + name
        value = state_dict.get(key)
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() != 1:
            value = value.reshape(-1)
        if name in FLOAT_BITS and value.is_floating_point():
            value = value.to(torch.float32).contiguous().view(torch.int32)
        state_dict[key] = value


def _use_bitsandbytes(weight: torch.Tensor) -> bool:
    """True for a CUDA weight when bitsandbytes can be imported."""
    if not weight.is_cuda:
        return False
    try:
        import bitsandbytes.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - optional accelerator path
        return False
    return True
