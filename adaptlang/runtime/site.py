"""``SiteModule``: one wrapper per patched module, running the active deltas around it.

The wrapper keeps the original module, unchanged, as ``base`` (``remove()``
puts that very object back) and each delta's parameters as a part in
``parts`` (delta name -> part). One forward, for the active parts::

    x  <- before-adapters(x)                     # in activation order
    x' <- x * u                                  # IA3 feedforward factors
    y  <- base(x')                               # W0 = W (+ sparse) (dequantized if quantized)
    y  <- y + LoRA(x') + DoRA(x')                # one concatenated product per dropout group
    y  <- y * v                                  # IA3 output factors
    y  <- y + parallel-adapters(x)
    y  <- after-adapters(y)                      # in activation order

(on element 0 of a tuple output). ``set_active`` turns the active list into
a :class:`~adaptlang.runtime.program.Program` once (kept per list, so task
switches only assign; :mod:`adaptlang.runtime.activity`), and the forward
does no per-call lookups: with plain LoRA only on an ``nn.Linear`` it is the
fused product of :mod:`adaptlang.runtime.fused`; with nothing active (or all
merged) it is ``base(x)``. ``set_rows`` gives every batch row its own list
instead (mixed-task batches, :mod:`adaptlang.runtime.rows`), for direct
single-threaded callers; ``adapted(..., tasks=[...])`` hands each site its
per-row program through the call's context instead (``CALL_PROGRAMS``,
:mod:`adaptlang.runtime.concurrency`), which concurrent calls do not share.

Drop-in behaviour in HF models:

* ``forward(*args, **kwargs)`` passes every argument to the base module;
* attributes the wrapper lacks are read from the base (``weight``,
  ``in_features``, ``nf``, ``config``...); a quantized site's ``weight`` is
  its :class:`~adaptlang.runtime.quant.QuantizedWeight` (``shape``,
  ``dtype``, ``dequantize()``);
* ``state_dict()`` keeps the base's keys as they were (``q_proj.weight``,
  not ``q_proj.base.weight``), so checkpoints of the original model still
  load, in either direction; the parts add ``q_proj.parts.{delta}.{name}``
  and a quantized weight is ``q_proj.quant.*`` (loading a dense
  ``q_proj.weight`` into a quantized site quantizes it). ``named_parameters()``
  shows the real module tree (``q_proj.base.weight``; a quantized site's
  frozen integer storage ``q_proj.quant.codes``..., parameters so that FSDP2
  shards it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.activity import SiteActivity
from adaptlang.runtime.adapter import build_adapter_part
from adaptlang.runtime.concurrency import CALL_PROGRAMS
from adaptlang.runtime.fused import plain_linear
from adaptlang.runtime.ia3 import build_ia3_part
from adaptlang.runtime.layers import describe_layer, module_device, out_in_view
from adaptlang.runtime.lora import build_lora_part
from adaptlang.runtime.merging import MERGEABLE_KINDS, check_keep, merge_parts, unmerge_parts
from adaptlang.runtime.program import BASE_ONLY, LORA_ONLY, Program, output_is_private
from adaptlang.runtime.quant import QuantizedWeight
from adaptlang.runtime.sparse import build_sparse_part
from adaptlang.runtime.state_keys import fqn_modifiers, put_base_keys_back, route_base_keys

__all__ = ["PART_KINDS", "SiteModule"]

PART_KINDS = ("lora", "ia3", "adapter", "sparse")

_call_programs = CALL_PROGRAMS.get  # bound once: the forward calls it on every site


class SiteModule(SiteActivity, nn.Module):
    """A patched module: the original as ``base``, delta parts around it.

    Build it with :meth:`wrap`.

    Attributes:
        base: The original module object (never replaced; see :meth:`quantize` for its weight).
        parts: Delta name -> part module (``LoRAPart``, ``IA3Part``, ``AdapterPart``, ``SparsePart``).
        quant: The quantized storage of the base weight, or None.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        # Registered and set directly: nn.Module.__setattr__'s checks cost more than the rest of
        # wrapping, which apply does once per site (hundreds on a 70B model).
        self._modules["base"] = base
        self._modules["parts"] = nn.ModuleDict()
        single = Program.build(base, [], None)
        self.__dict__.update(
            quant=None,  # the quantized storage of the base weight (a module) once quantize() runs
            _active=[], _merged=None, _merged_names=frozenset(),
            _rows=None,  # per-row lists while a mixed-task batch runs
            _single=single,  # the set_active program, kept while rows run
            _prog=single,
            _row_cache=None,  # (rows, program) of the last set_rows
            _epoch=0,  # bumped whenever the tensors change (_rebuild): programs kept elsewhere go stale
            # set_active list -> its (unmerged) program; programs read tensors at call time, so they stay
            # valid until the tensors themselves are swapped (.to(), quantize(), unwrap()).
            _programs={},
            # A wrapper starts in the mode of what it wraps (an eval model must not start dropping out).
            training=base.training,
        )
        self.register_state_dict_post_hook(put_base_keys_back)
        self.register_load_state_dict_pre_hook(route_base_keys)

    @classmethod
    def wrap(cls, base: nn.Module) -> "SiteModule":
        """Returns a wrapper around ``base`` with no parts (its forward is ``base``'s)."""
        if isinstance(base, SiteModule):
            raise RuntimeApplyError("this module is already a site wrapper")
        return cls(base)

    def unwrap(self) -> nn.Module:
        """Returns the base module with a plain weight in its slot.

        Unmerges first. A quantized site gets a new ``weight`` Parameter
        holding the dequantized values (in the original dtype), which
        ``remove()`` copies into the original Parameter object.
        """
        if self._merged is not None:
            self.unmerge()
        if self.quant is not None:
            quant = self.quant
            self.base._parameters["weight"] = nn.Parameter(quant.dequantize(quant.dtype), requires_grad=False)
            self.quant = None
            self._programs.clear()
            self._rebuild()
        return self.base

    # ------------------------------------------------------------- parts
    def add_part(self, delta: str, kind: str, site: dict[str, Any],
                 generator: torch.Generator | None = None) -> nn.Module:
        """Creates ``delta``'s part from its plan site and adds it (inactive).

        Args:
            delta: The delta's name.
            kind: ``lora``, ``ia3``, ``adapter`` or ``sparse``.
            site: The plan site dict (design.md, "The plan JSON").
            generator: Seeds the part's random initial values.

        Returns:
            The part.

        Raises:
            RuntimeApplyError: Unknown kind, a delta already here, or a module
                the delta cannot act on.
        """
        parts = self._modules["parts"]  # (module lookups through __getattr__ cost more than the checks)
        if delta in parts:
            raise RuntimeApplyError(Diagnostic(f"delta '{delta}' already has a part at this site", obj=delta))
        base = self._modules["base"]
        if kind == "lora":
            dense = None
            if self.quant is not None:  # DoRA's magnitude starts from the weight in use
                dense = out_in_view(describe_layer(base).kind, self.quant.dequantize(torch.float32))
            part = build_lora_part(base, site, generator, weight_oi=dense)
        elif kind == "ia3":
            part = build_ia3_part(base, site)
        elif kind == "adapter":
            part = build_adapter_part(base, site, generator)
        elif kind == "sparse":
            part = build_sparse_part(site, self._param_values(site.get("param", "weight")), generator)
        else:
            raise RuntimeApplyError(Diagnostic(f"unknown site delta kind '{kind}'", obj=delta,
                                               hint=did_you_mean(kind, PART_KINDS)))
        if self.quant is not None and self.quant.device != module_device(part):
            part.to(self.quant.device)  # a quantized base may have no tensor left to take the device from
        if part.training != self.training:
            part.train(self.training)
        parts[delta] = part
        return part

    def share_part(self, delta: str, part: nn.Module) -> None:
        """Adds another site's sparse part here too (inactive): a tied tensor's other slot.

        The part's values are then one set of parameters used at both modules,
        as the tensor itself is.

        Raises:
            RuntimeApplyError: Not a sparse part, a delta already here, or a base
                without that parameter.
        """
        parts = self._modules["parts"]
        if getattr(part, "kind", None) != "sparse":
            raise RuntimeApplyError(Diagnostic(f"only sparse parts can be shared, not '{delta}'", obj=delta))
        if delta in parts:
            raise RuntimeApplyError(Diagnostic(f"delta '{delta}' already has a part at this site", obj=delta))
        if tuple(self._param_values(part.param).shape) != part.shape:
            raise RuntimeApplyError(Diagnostic(f"'{part.param}' here is not the shape of delta '{delta}'", obj=delta))
        parts[delta] = part

    def _param_values(self, name: str) -> torch.Tensor:
        """Returns the current values of a base parameter (dequantized when quantized)."""
        if name == "weight" and self.quant is not None:
            return self.quant.dequantize(self.quant.dtype)
        tensor = self.base._parameters.get(name)
        if tensor is None:
            raise RuntimeApplyError(Diagnostic(
                f"{type(self.base).__name__} has no parameter '{name}'",
                hint=did_you_mean(name, [n for n, p in self.base._parameters.items() if p is not None])))
        return tensor.detach()

    def _part(self, delta: str) -> nn.Module:
        parts = self._modules["parts"]
        part = parts[delta] if delta in parts else None
        if part is None:
            raise RuntimeApplyError(Diagnostic(f"no delta '{delta}' at this site", obj=delta,
                                               hint=did_you_mean(delta, list(self.parts))))
        return part

    def adapter_params(self, delta: str) -> dict[str, nn.Parameter]:
        """Returns ``delta``'s parameters here by local name (``lora_A``, ``down.weight``...)."""
        return self._part(delta).adapter_params()

    def adapter_buffers(self, delta: str) -> dict[str, torch.Tensor]:
        """Returns ``delta``'s non-trainable state a bundle must keep (sparse ``indices``), by local name."""
        part = self._part(delta)
        return part.adapter_buffers() if hasattr(part, "adapter_buffers") else {}

    def _apply(self, fn: Any, recurse: bool = True) -> "SiteModule":
        # .to()/.half() may swap tensors: the program must refer to the new ones.
        out = super()._apply(fn, recurse)
        self._programs.clear()
        self._rebuild()
        return out

    # ------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base module's forward with the active deltas (module docstring).

        A mixed-task call's programs travel in its context (``CALL_PROGRAMS``),
        so concurrent calls never see each other's; outside one, ``_prog``.
        """
        call = _call_programs()
        prog = self._prog if call is None else call.get(self, self._prog)
        mode = prog.mode
        if mode is LORA_ONLY:
            if prog.fusable and len(args) == 1 and not kwargs and plain_linear(prog.base):
                x = args[0]
                group = prog.groups[0]
                # Not under autocast: the fused function would mix the autocast dtype with fp32 factors.
                if (x.dtype is group.dtype and prog.base.weight.dtype is x.dtype
                        and not torch.is_autocast_enabled(x.device.type)):
                    return group.run_fused(x, self.training)
            y = prog.base(*args, **kwargs)
            x = args[0] if args else prog.first_input(args, kwargs)
            training = self.training
            # The base's fresh output can take the sum in place unless a hook may hold it.
            inplace = output_is_private(prog.base)
            for group in prog.groups:
                y = group.add_to(y, x, training, inplace)
            return y
        if mode is BASE_ONLY:
            return prog.base(*args, **kwargs)
        return prog.run(args, kwargs, self.training)

    # ------------------------------------------------------------ merging
    @property
    def merged(self) -> bool:
        """True while active deltas are folded into the base weights."""
        return self._merged is not None

    @property
    def kept_bytes(self) -> int:
        """Bytes held to undo the merge now in force (0 when not merged; see :meth:`merge`)."""
        return 0 if self._merged is None else self._merged.kept_bytes()

    def merge(self, keep: str = "device") -> None:
        """Folds the active LoRA/DoRA, IA3 and sparse deltas into the base weights.

        Adapters stay active around the merged base. No-op when merged or
        nothing is active. The formula and the modes are in
        :mod:`adaptlang.runtime.merging`.

        Args:
            keep: ``"device"`` (default): keep the original of every tensor the merge
                changes, next to it, so :meth:`unmerge` restores it bit for bit; memory:
                one copy of each weight/bias a LoRA/DoRA/IA3 delta folds into (a tensor
                only sparse deltas touch: its k entries and positions). ``"cpu"``: the
                same copies in host memory (still exact). ``"none"``: no copy;
                unmerge inverts the arithmetic, within rounding.

        Raises:
            RuntimeApplyError: A quantized base, only adapters active, rows running,
                an unknown ``keep``, or (``keep="none"``) a factor with a zero
                entry (nothing changes).
        """
        check_keep(keep)
        if self._rows is not None:
            raise RuntimeApplyError("cannot merge while rows run different deltas (set_rows(None) first)")
        if self._merged is not None or not self._active:
            return
        if self.quant is not None:
            raise RuntimeApplyError("cannot merge: the base weight is quantized")
        names = [d for d, w in self._active if self.parts[d].kind in MERGEABLE_KINDS and w != 0.0]
        if not names:
            raise RuntimeApplyError("nothing here can merge: adapters run beside the base weights")
        weights = dict(self._active)
        self._merged = merge_parts(self.base, [(self.parts[d], weights[d]) for d in names], keep=keep)
        self._merged_names = frozenset(names)
        self._rebuild()

    def unmerge(self) -> None:
        """Takes merged deltas back out of the base weights (no-op when not merged).

        Bit for bit unless merged with ``keep="none"``, whatever happened to
        the delta factors meanwhile (merged parts get no gradients, but a
        changed factor must not change what comes back). Changes made to the
        merged base tensors themselves while merged are discarded. After
        ``.to(...)`` while merged, the originals come back cast from their
        merge-time dtype as ``.to()`` casts (exact for a device move or an up-cast).

        Raises:
            RuntimeApplyError: A merged parameter was removed or reshaped (the site stays merged).
        """
        if self._merged is None:
            return
        unmerge_parts(self._merged)
        self._merged = None
        self._merged_names = frozenset()
        self._rebuild()

    # ------------------------------------------------------- quantization
    def quantize(self, fmt: str, block: int = 64, double: bool = True, compute: str = "float32") -> dict[str, int]:
        """Replaces the base weight by block-wise quantized storage (``self.quant``).

        The base's ``weight`` slot is emptied (the Parameter leaves
        ``base._parameters``) and the forward dequantizes on the fly to
        ``compute``. On ``remove()`` the transaction puts the original
        Parameter object back: holding its original values when
        ``apply(..., keep_base=True)`` kept them, else the dequantized values
        (:meth:`unwrap`).

        The storage is frozen integer parameters of ``self.quant`` (never
        trainable), which FSDP2's ``fully_shard`` shards across ranks: quantize
        first, then shard (:class:`~adaptlang.runtime.quant.QuantizedWeight`).

        Args:
            fmt: ``nf4`` or ``int8``.
            block: Values per quantization block.
            double: Quantize the per-block scales too.
            compute: ``float32``, ``bfloat16`` or ``float16``.

        Returns:
            ``{"bytes_before", "bytes_after"}``: the weight's bytes, and the
            quantized storage's (codes and scales).

        Raises:
            RuntimeApplyError: Not a Linear/Conv1D/Embedding, already quantized, or merged.
        """
        if self.quant is not None:
            raise RuntimeApplyError("this site is already quantized")
        if self._merged is not None:
            raise RuntimeApplyError("unmerge before quantizing")
        if describe_layer(self.base).kind is None:
            raise RuntimeApplyError(Diagnostic(f"cannot quantize a {type(self.base).__name__}",
                                               hint="quantize Linear, Conv1D or Embedding modules"))
        weight = self.base._parameters.get("weight")
        if weight is None:
            raise RuntimeApplyError(f"{type(self.base).__name__} has no weight to quantize")
        quant = QuantizedWeight(weight.detach(), fmt, block, double, compute)
        before = weight.numel() * weight.element_size()
        del self.base._parameters["weight"]
        self.quant = quant
        self._programs.clear()
        self._rebuild()
        return {"bytes_before": before, "bytes_after": quant.nbytes()}

    def _fqn_modifiers(self) -> dict[str, str]:
        """The base's key names for ``torch.distributed.checkpoint`` (:func:`~adaptlang.runtime.state_keys.fqn_modifiers`)."""
        return fqn_modifiers(self._modules["base"])

    # ------------------------------------------------------- passthrough
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__"):
                raise
            modules = self.__dict__.get("_modules")
            base = modules.get("base") if modules else None
            if base is None:
                raise
            if name == "weight" and modules.get("quant") is not None:
                return modules["quant"]
            return getattr(base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Assigning a parameter the base owns (HF's tie_weights: ``lm_head.weight = wte.weight``)
        # goes to the base, where the forward reads it, not onto the wrapper.
        if isinstance(value, nn.Parameter) and name not in self._parameters:
            base = self._modules.get("base")
            if base is not None and name in base._parameters:
                setattr(base, name, value)
                return
        super().__setattr__(name, value)

    def extra_repr(self) -> str:
        active = ", ".join(f"{d}*{w:g}" if w != 1.0 else d for d, w in self._active)
        return f"active=[{active}]" + (", merged" if self._merged is not None else "")
