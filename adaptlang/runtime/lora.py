"""LoRA, rsLoRA and DoRA on Linear, GPT-2 Conv1D and Embedding, in the spirit of loralib.

A LoRA site computes ``y = W x + (alpha / r) * B(A(dropout(x)))`` (rsLoRA:
``alpha / sqrt(r)``); DoRA (Liu et al. 2024) rescales each output row of the
adapted weight to a trained magnitude ``m``::

    y = m / ||W + s B A||_row * (W x + s B A x) + bias     # the norm is a constant (detached)

computed, as PEFT's ``DoraLinearLayer`` does, as the base output plus
``(m / n - 1) * W x + (m / n) * s * B A x``. Shapes follow PEFT so that
weights map one to one: ``lora_A`` (r, in), ``lora_B`` (out, r); on an
Embedding ``lora_A`` (r, num_embeddings) is gathered by the ids and
``lora_B`` is (dim, r).

Initialisation (``init``):

* ``kaiming``: A kaiming-uniform with ``a = sqrt(5)`` (nn.Linear's default,
  PEFT's ``init_lora_weights=True``), B zero;
* ``gaussian``: A ~ N(0, 1/r) (PEFT's ``"gaussian"``), B zero;
* on an Embedding both follow PEFT: A zero, B ~ N(0, 1);
* ``zeros``: A and B both zero, no random numbers drawn. Meant for deltas
  whose values are loaded afterwards (bundles, PEFT import): the delta is
  exactly zero, but gradient descent cannot move it either (each factor's
  gradient is proportional to the other factor), except DoRA's magnitude.

Several plain LoRA deltas active at one site run as one concatenated
low-rank product (:class:`~adaptlang.runtime.fused.LoRAGroup`): ``x @ cat(A_i).T`` then one ``addmm``
with ``cat(c_i B_i)``, where ``c_i = weight_i * scaling_i``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError
from adaptlang.runtime.fused import LoRAGroup
from adaptlang.runtime.layers import (
    EMBEDDING, LayerInfo, adapter_dtype, describe_layer, filling_values, from_out_in, module_device, module_dtype,
    out_in_view, run_layer,
)

__all__ = ["INITS", "LoRAGroup", "LoRALinear", "LoRAPart", "VARIANTS", "build_lora_part"]

VARIANTS = ("lora", "rslora", "dora")
INITS = ("kaiming", "gaussian", "zeros")


def check_lora_args(layer: LayerInfo, rank: int, variant: str, init: str, bias: bool, dropout: float) -> None:
    """Raises RuntimeApplyError for a LoRA the layer or the options do not allow."""
    if layer.kind is None:
        raise RuntimeApplyError("LoRA acts on Linear, Conv1D or Embedding modules only")
    problems = []
    if int(rank) < 1:
        problems.append(f"rank must be at least 1, got {rank}")
    if variant not in VARIANTS:
        problems.append(f"unknown LoRA variant '{variant}' (one of {', '.join(VARIANTS)})")
    if init not in INITS:
        problems.append(f"unknown LoRA init '{init}' (one of {', '.join(INITS)})")
    if not 0.0 <= float(dropout) < 1.0:
        problems.append(f"dropout must be in [0, 1), got {dropout}")
    if bias and layer.kind == EMBEDDING:
        problems.append("a LoRA bias is not supported on an Embedding (as in PEFT)")
    if problems:
        raise RuntimeApplyError(Diagnostic(problems[0], notes=tuple(problems[1:])))


class LoRAPart(nn.Module):
    """One LoRA delta at one site: the factors, and DoRA's magnitude when asked for.

    Args:
        layer: The base layer (:func:`~adaptlang.runtime.layers.describe_layer`).
        rank: r.
        alpha: Scaling numerator (default: ``rank``).
        dropout: Dropout probability on the LoRA input (not used on an Embedding, as in PEFT).
        init: ``kaiming``, ``gaussian`` or ``zeros`` (module docstring).
        variant: ``lora``, ``rslora`` or ``dora``.
        bias: Add a trainable bias to B (PEFT's ``lora_bias=True``).
        generator: Seeds the random initial values.
        device: Where the parameters live.
        dtype: Their dtype (fp32 by default, see ``adapter_dtype``).
    """

    kind = "lora"

    def __init__(self, layer: LayerInfo, rank: int, alpha: float | None = None, *, dropout: float = 0.0,
                 init: str = "kaiming", variant: str = "lora", bias: bool = False,
                 generator: torch.Generator | None = None, device: Any = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        check_lora_args(layer, rank, variant, init, bias, dropout)
        rank, alpha = int(rank), float(alpha if alpha is not None else rank)
        # Plain attributes and parameters go into the module's dicts directly: apply builds hundreds
        # of parts, and nn.Module.__setattr__'s checks would cost more than the rest of __init__.
        self.__dict__.update(
            layer_kind=layer.kind, rank=rank, alpha=alpha, init=init, variant=variant,
            dropout=0.0 if layer.kind == EMBEDDING else float(dropout),
            scaling=alpha / math.sqrt(rank) if variant == "rslora" else alpha / rank)
        factory = {"device": device, "dtype": dtype}
        params = self._parameters
        # Empty, then filled by reset_parameters (zeros first): on the meta device, where there is
        # nothing to fill, torch.zeros would cost four times torch.empty.
        params["lora_A"] = nn.Parameter(torch.empty(rank, layer.in_features, **factory))  # (r, in)
        params["lora_B"] = nn.Parameter(torch.empty(layer.out_features, rank, **factory))  # (out, r)
        params["lora_bias"] = nn.Parameter(torch.empty(layer.out_features, **factory)) if bias else None
        # DoRA's (out,) magnitude; set by init_magnitude once the base weight is known.
        params["magnitude"] = None
        self.reset_parameters(generator)

    @property
    def dora(self) -> bool:
        """True for the DoRA variant."""
        return self.variant == "dora"

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fills A and B as ``init`` says (module docstring); the bias starts at zero."""
        if self.lora_A.is_meta or not filling_values():
            return  # no values to fill (a meta model), or values about to be loaded (deferred_values)
        with torch.no_grad():
            self.lora_A.zero_()
            self.lora_B.zero_()
            if self.lora_bias is not None:
                self.lora_bias.zero_()
            if self.init == "zeros":
                return
            if self.layer_kind == EMBEDDING:
                # PEFT (after loralib): embedding A zero, B standard normal, for either init.
                self.lora_B.normal_(generator=generator)
            elif self.init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            else:
                self.lora_A.normal_(0.0, 1.0 / self.rank, generator=generator)

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the delta's parameters by local name (``lora_A``, ``lora_B``, ``lora_bias``, ``magnitude``)."""
        params = {"lora_A": self.lora_A, "lora_B": self.lora_B}
        if self.lora_bias is not None:
            params["lora_bias"] = self.lora_bias
        if self.magnitude is not None:
            params["magnitude"] = self.magnitude
        return params

    # ------------------------------------------------------------------ math
    def delta_weight(self) -> torch.Tensor:
        """Returns ``s * B @ A``: (out, in), in the parameters' dtype."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def weight_norm(self, weight_oi: torch.Tensor) -> torch.Tensor:
        """Returns DoRA's row norm ``||W + s B A||`` (out,), detached (DoRA paper §4.3, as PEFT)."""
        lora_weight = (self.lora_B @ self.lora_A).detach().to(weight_oi.dtype)  # (out, in)
        weight = weight_oi.detach() + self.scaling * lora_weight
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)

    def init_magnitude(self, weight_oi: torch.Tensor) -> None:
        """Creates DoRA's magnitude: the row norm of ``W + s B A`` at creation (PEFT's init)."""
        with torch.no_grad():
            norm = self.weight_norm(weight_oi.to(self.lora_A.dtype))
        self.magnitude = nn.Parameter(norm.to(self.lora_A.dtype).clone())

    def low_rank(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """Returns ``B A x (+ bias)``, unscaled: (..., out)."""
        if self.layer_kind == EMBEDDING:
            after_a = F.embedding(x, self.lora_A.t(), base.padding_idx, None, 2.0,
                                  base.scale_grad_by_freq, base.sparse)  # (..., r)
            return after_a @ self.lora_B.t()
        return F.linear(F.linear(x, self.lora_A), self.lora_B, self.lora_bias)

    def dora_term(self, x: torch.Tensor, base_out: torch.Tensor, weight_oi: torch.Tensor, base: nn.Module,
                  bias: torch.Tensor | None, training: bool) -> torch.Tensor:
        """Returns what DoRA adds to the base output, as PEFT's ``DoraLinearLayer.forward``.

        Args:
            x: The site's input (``(..., in)`` or ids), already in the part's dtype.
            base_out: The base output ``W x + bias`` for the undropped input.
            weight_oi: The base weight in use, (out, in).
            base: The original module (Embedding options).
            bias: The base bias, subtracted from ``base_out`` (DoRA scales ``W x`` only).
            training: Whether dropout is on.

        Returns:
            ``(m/n - 1) * W x + (m/n) * s * (B A x + bias_B)``: (..., out).
        """
        scale = self.magnitude / self.weight_norm(weight_oi)  # (out,), norm detached
        if self.dropout and training:
            # PEFT: with dropout active, W x is recomputed on the dropped input.
            x = F.dropout(x, self.dropout, True)
            plain = run_layer(self.layer_kind, base, x, from_out_in(self.layer_kind, weight_oi.to(x.dtype)), None)
        else:
            plain = base_out if bias is None else base_out - bias
        return (scale - 1) * plain + scale * self.low_rank(x, base) * self.scaling


def build_lora_part(base: nn.Module, site: dict[str, Any], generator: torch.Generator | None,
                    weight_oi: torch.Tensor | None = None, device: Any = None) -> LoRAPart:
    """Creates the LoRA part a plan site describes, on the base module's device.

    Args:
        base: The original module.
        site: The plan site (``rank``, ``alpha``, ``dropout``, ``init``, ``variant``, ``bias``,
            ``in_features``, ``out_features``).
        generator: Seeds the initial values.
        weight_oi: The base weight in use, (out, in) (DoRA's magnitude starts at its row norm).
        device: Where to create the part (default: the base's device); ``init_deltas``
            builds a CPU twin of a part whose base is sharded or was on the meta device.

    Raises:
        RuntimeApplyError: A layer LoRA cannot act on, or features that differ from the plan's.
    """
    layer = describe_layer(base)
    check_features(layer, site, type(base).__name__)
    part = LoRAPart(
        layer, int(site.get("rank", 8)), site.get("alpha"), dropout=float(site.get("dropout", 0.0)),
        init=site.get("init", "kaiming"), variant=site.get("variant", "lora"), bias=bool(site.get("bias", False)),
        generator=generator, device=module_device(base) if device is None else device,
        dtype=adapter_dtype(module_dtype(base)))
    if part.dora:
        if not filling_values():  # loaded right after: an empty magnitude of the right shape will do
            part.magnitude = nn.Parameter(torch.empty_like(part.lora_B[:, 0]))
            return part
        if weight_oi is None:
            weight_oi = out_in_view(layer.kind, base.weight)
        part.init_magnitude(weight_oi)
    return part


def check_features(layer: LayerInfo, site: dict[str, Any], cls: str) -> None:
    """Raises RuntimeApplyError when the plan's feature widths differ from the module's."""
    if layer.kind is None:
        raise RuntimeApplyError(Diagnostic(
            f"cannot place this delta on a {cls}", hint="use a Linear, Conv1D or Embedding module"))
    for key in ("in_features", "out_features"):
        want = site.get(key)
        have = getattr(layer, key)
        if want is not None and int(want) != have:
            raise RuntimeApplyError(f"the plan says {key}={want}, the {cls} has {have}")


class LoRALinear(nn.Module):
    """A drop-in LoRA layer (loralib style): the original layer plus one LoRA, mergeable.

    Works on ``nn.Linear``, GPT-2 ``Conv1D`` and ``nn.Embedding``; ``merge()``
    folds the delta into the layer's weight and ``unmerge()`` takes it out
    again, bit for bit (``merge`` keeps a copy of the weight; see
    :func:`~adaptlang.runtime.merging.merge_parts` for ``keep``).

    Args:
        base: The layer (kept as ``base``; its weight changes only while merged).
        part: Its LoRA.
    """

    def __init__(self, base: nn.Module, part: LoRAPart):
        super().__init__()
        self.base = base
        self.lora = part
        self._record: Any = None

    @classmethod
    def from_linear(cls, base: nn.Module, rank: int = 8, alpha: float | None = None, *, dropout: float = 0.0,
                    init: str = "kaiming", variant: str = "lora", bias: bool = False,
                    generator: torch.Generator | None = None) -> "LoRALinear":
        """Wraps ``base`` (Linear, Conv1D or Embedding) with a fresh LoRA (see :class:`LoRAPart`)."""
        site = {"rank": rank, "alpha": alpha, "dropout": dropout, "init": init, "variant": variant, "bias": bias}
        return cls(base, build_lora_part(base, site, generator))

    @property
    def merged(self) -> bool:
        """True while the delta is folded into the base weight."""
        return self._record is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` plus the LoRA (nothing more while merged)."""
        y = self.base(x)
        if self._record is not None:
            return y
        part = self.lora
        if part.dora:
            kind = part.layer_kind
            xin = x if kind == EMBEDDING else x.to(part.lora_A.dtype)
            term = part.dora_term(xin, y.to(part.lora_A.dtype), out_in_view(kind, self.base.weight), self.base,
                                  getattr(self.base, "bias", None), self.training)
            return (y + term).to(y.dtype)
        return LoRAGroup([(part, 1.0)], self.base).add_to(y, x, self.training)

    def merge(self, keep: str = "device") -> None:
        """Folds the LoRA into the base weight (no-op when merged).

        Args:
            keep: ``"device"``/``"cpu"``: keep a copy of the weight (and bias) there,
                for an exact unmerge; ``"none"``: no copy, unmerge within rounding.
        """
        from adaptlang.runtime.merging import merge_parts

        if self._record is None:
            self._record = merge_parts(self.base, [(self.lora, 1.0)], keep=keep)

    def unmerge(self) -> None:
        """Takes the LoRA back out of the base weight (no-op when not merged; exact unless ``keep="none"``)."""
        from adaptlang.runtime.merging import unmerge_parts

        if self._record is not None:
            unmerge_parts(self._record)
            self._record = None
