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

(on element 0 of a tuple output). :meth:`SiteModule.set_active` turns the
active list into a :class:`~adaptlang.runtime.program.Program` once, so the
forward does no per-call lookups: with plain LoRA only it is ``base(x)``
plus one ``addmm`` per group; with nothing active it is ``base(x)``.
:meth:`SiteModule.set_rows` gives every batch row its own list instead
(mixed-task batches, :mod:`adaptlang.runtime.rows`).

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
  shows the real module tree (``q_proj.base.weight``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError, did_you_mean
from adaptlang.runtime.adapter import build_adapter_part
from adaptlang.runtime.fused import plain_linear
from adaptlang.runtime.ia3 import build_ia3_part
from adaptlang.runtime.layers import describe_layer, module_device, out_in_view
from adaptlang.runtime.lora import build_lora_part
from adaptlang.runtime.merging import MERGEABLE_KINDS, MergeRecord, merge_parts, unmerge_parts
from adaptlang.runtime.program import BASE_ONLY, LORA_ONLY, Program, output_is_private
from adaptlang.runtime.quant import QuantizedWeight
from adaptlang.runtime.rows import RowProgram
from adaptlang.runtime.sparse import build_sparse_part
from adaptlang.runtime.state_keys import put_base_keys_back, route_base_keys

__all__ = ["PART_KINDS", "SiteModule"]

PART_KINDS = ("lora", "ia3", "adapter", "sparse")


class SiteModule(nn.Module):
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

    # ----------------------------------------------------------- activity
    @property
    def active(self) -> list[tuple[str, float]]:
        """The active ``(delta, weight)`` list, in order."""
        return list(self._active)

    def set_active(self, active: list[tuple[str, float]]) -> None:
        """Activates exactly these deltas, with their weights, in this order.

        Precomputes the forward program (groups, concatenation order, factors
        to multiply); a merged site is unmerged first.

        Args:
            active: Ordered ``(delta, weight)`` pairs; deltas must have parts here.

        Raises:
            RuntimeApplyError: A delta with no part here, or one listed twice.
        """
        key = tuple(active)
        prog = self._programs.get(key) if self._merged is None else None
        if prog is None:  # first time for this list (or merged): check it, unmerge, build
            checked = self._checked(active)
            if self._merged is not None:
                self.unmerge()
            prog = self._programs.get(key) or self._programs.setdefault(key, self._program_for(checked))
            key = tuple(checked)
        # Task switching lands here: plain attributes, written to __dict__ directly
        # (nn.Module.__setattr__ would cost more than the switch itself).
        attrs = self.__dict__
        old = attrs["_single"]
        if old is not prog:
            old.drop_caches()
        attrs["_active"] = list(key)
        attrs["_rows"] = None
        attrs["_single"] = attrs["_prog"] = prog

    def prepare(self, active: list[tuple[str, float]]) -> None:
        """Builds and keeps the program for ``active`` without activating it (``apply`` does, per task).

        A later ``set_active(active)`` then only assigns it.

        Raises:
            RuntimeApplyError: As :meth:`set_active`.
        """
        key = tuple(active)
        if key not in self._programs:
            self._programs[key] = self._program_for(self._checked(active))

    def _checked(self, active: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """Returns ``active`` with float weights, or raises for unknown or repeated deltas."""
        checked = []
        for delta, weight in active:
            self._part(delta)
            checked.append((delta, float(weight)))
        if len({d for d, _ in checked}) != len(checked):
            raise RuntimeApplyError(f"a delta is listed twice in {[d for d, _ in checked]}")
        return checked

    def _program_for(self, checked: list[tuple[str, float]]) -> Program:
        """The unmerged program of a checked active list."""
        parts = self._modules["parts"]
        return Program.build(self._modules["base"], [(parts[d], w) for d, w in checked], self.quant)

    def set_rows(self, rows: list[list[tuple[str, float]]] | None) -> None:
        """Gives each batch row its own ordered ``(delta, weight)`` list (mixed-task batches).

        Until ``set_rows(None)``, every forward must get a batch of
        ``len(rows)`` rows (dim 0 of the main input); row ``r`` computes what
        the site computes for it alone under ``set_active(rows[r])``
        (:mod:`adaptlang.runtime.rows`). A merged site is unmerged first.

        Args:
            rows: Per row, the ordered ``(delta, weight)`` list (empty: base only); None returns
                to the ``set_active`` list.

        Raises:
            RuntimeApplyError: Unknown deltas, adapters ordered differently by two rows, or a
                sparse delta that cannot differ per row.
        """
        if rows is None:
            self._rows = None
            self._prog = self._single
            return
        key = tuple(tuple((d, float(w)) for d, w in row) for row in rows)
        cached = self._row_cache
        if cached is not None and cached[0] == key:  # the same batch layout as last time: nothing to build
            prog = cached[1]
        else:
            for row in key:
                for delta, _ in row:
                    self._part(delta)
            prog = self._row_program(key)  # raises before anything changes
        if self._merged is not None:
            self.unmerge()  # the program reads the weights at call time: it stays valid
        self._rows, self._prog = key, prog
        self._row_cache = (key, prog)

    def _row_program(self, rows: tuple[tuple[tuple[str, float], ...], ...]) -> Any:
        """The program for per-row lists: the plain one when every row lists the same deltas."""
        if all(row == rows[0] for row in rows):
            prog = self._programs.get(rows[0])
            if prog is None:
                prog = self._programs.setdefault(rows[0], self._program_for(self._checked(list(rows[0]))))
            return prog
        return RowProgram(self.base, self.parts, [list(row) for row in rows], self.quant)

    def _rebuild(self) -> None:
        """Recomputes the forward programs from the active, unmerged parts (and the per-row lists)."""
        entries = [(self.parts[d], w) for d, w in self._active if d not in self._merged_names]
        self._single = Program.build(self.base, entries, self.quant)
        self._row_cache = None
        if self._rows is not None:
            self._prog = self._row_program(self._rows)
            self._row_cache = (self._rows, self._prog)
        else:
            self._prog = self._single

    def _apply(self, fn: Any, recurse: bool = True) -> "SiteModule":
        # .to()/.half() may swap tensors: the program must refer to the new ones.
        out = super()._apply(fn, recurse)
        self._programs.clear()
        self._rebuild()
        return out

    # ------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base module's forward with the active deltas (module docstring)."""
        prog = self._prog
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

    def merge(self) -> None:
        """Folds the active LoRA/DoRA, IA3 and sparse deltas into the base weights.

        Adapters stay active around the merged base. No-op when merged or
        nothing is active.

        Raises:
            RuntimeApplyError: A quantized base, only adapters active, or a
                merge that could not be undone exactly (nothing changes).
        """
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
        self._merged = merge_parts(self.base, [(self.parts[d], weights[d]) for d in names])
        self._merged_names = frozenset(names)
        self._rebuild()

    def unmerge(self) -> None:
        """Takes merged deltas back out of the base weights (no-op when not merged)."""
        if self._merged is None:
            return
        record, self._merged = self._merged, None
        self._merged_names = frozenset()
        unmerge_parts(record)
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
