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
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean

__all__ = [
    "FORMATS", "NF4_LEVELS", "QuantizedWeight", "dequantize_blockwise", "dynamic_map", "quantize_blockwise",
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
    ``module.weight.shape`` keeps working. Buffers (all non-trainable):
    ``codes`` (uint8, packed for NF4), and either ``absmax`` (fp32) or
    ``absmax_codes`` (uint8) + ``absmax_scale`` (fp32) + ``absmax_offset`` (fp32).

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
        self.store(weight)

    @property
    def device(self) -> torch.device:
        """Where the storage lives."""
        return self.codes.device

    def store(self, weight: torch.Tensor) -> None:
        """(Re)quantizes ``weight`` into this storage (its shape must match)."""
        if tuple(weight.shape) != tuple(self.shape):
            raise RuntimeApplyError(f"weight of shape {tuple(weight.shape)} does not fit quantized storage "
                                    f"of shape {tuple(self.shape)}")
        for name in ("codes", "absmax", "absmax_codes", "absmax_scale", "absmax_offset"):
            self._buffers.pop(name, None)
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
        self.register_buffer("codes", codes)
        if self.double:
            offset = absmax.mean()
            centred_codes, scale = quantize_blockwise(absmax - offset, SCALE_BLOCK, dynamic_map().to(absmax.device))
            self.register_buffer("absmax_codes", centred_codes[: absmax.numel()].clone())
            self.register_buffer("absmax_scale", scale)
            self.register_buffer("absmax_offset", offset.reshape(1))
        else:
            self.register_buffer("absmax", absmax)

    def block_absmax(self) -> torch.Tensor:
        """Returns each block's absmax as used to dequantize (fp32, after double quantization)."""
        if not self.double:
            return self.absmax
        n = self.absmax_codes.numel()
        pad = (-n) % SCALE_BLOCK
        codes = torch.cat([self.absmax_codes, self.absmax_codes.new_zeros(pad)]) if pad else self.absmax_codes
        centred = dequantize_blockwise(codes, self.absmax_scale, dynamic_map().to(self.absmax_scale.device))
        return centred[:n] + self.absmax_offset

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Returns the weight, dequantized: its original shape, in ``dtype`` (default: compute dtype)."""
        dtype = dtype or self.compute_dtype
        if self._bnb_state is not None:
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(self.codes, self._bnb_state).to(dtype).view(self.shape)
        numel = math.prod(self.shape)
        absmax = self.block_absmax()
        if self.fmt == "nf4":
            codes = unpack_nibbles(self.codes, absmax.numel() * self.block)
            flat = dequantize_blockwise(codes, absmax, _nf4_levels())
        else:
            flat = (self.codes.float().view(absmax.numel(), -1) * (absmax / 127).unsqueeze(1)).reshape(-1)
        return flat[:numel].view(self.shape).to(dtype)

    def nbytes(self) -> int:
        """Returns the bytes of the quantized storage (codes and scales)."""
        total = sum(b.numel() * b.element_size() for b in self.buffers())
        state = self._bnb_state
        if state is not None:  # bitsandbytes keeps the scales in its QuantState
            nested = getattr(state, "state2", None)
            for tensor in (state.absmax, getattr(state, "offset", None), getattr(nested, "absmax", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def _store_bnb(self, weight: torch.Tensor) -> None:
        """NF4 through bitsandbytes' CUDA kernels (same format as the reference path).

        The scales stay in bitsandbytes' ``QuantState`` (not a buffer): such a
        site's ``state_dict()`` holds the packed codes only, and ``.to()`` does
        not move the state.
        """
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(weight.detach().contiguous(), blocksize=self.block,
                                           compress_statistics=self.double, quant_type="nf4")
        self.register_buffer("codes", packed)
        self._bnb_state = state

    def _apply(self, fn: Any, recurse: bool = True) -> "QuantizedWeight":
        # ``model.to(torch.float64)`` / ``.half()`` convert every floating tensor of the model; the
        # weight this storage stands in for must follow (its reported dtype, the dtype it computes
        # in), else the site would compute in the old dtype and ``remove()`` would put it back.
        out = super()._apply(fn, recurse)
        device = self.codes.device
        self.dtype = fn(torch.empty(0, dtype=self.dtype, device=device)).dtype
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype, device=device)).dtype
        return out

    def extra_repr(self) -> str:
        return (f"fmt={self.fmt}, shape={tuple(self.shape)}, block={self.block}, double={self.double}, "
                f"compute={self.compute_dtype}")


def _use_bitsandbytes(weight: torch.Tensor) -> bool:
    """True for a CUDA weight when bitsandbytes can be imported."""
    if not weight.is_cuda:
        return False
    try:
        import bitsandbytes.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - optional accelerator path
        return False
    return True
