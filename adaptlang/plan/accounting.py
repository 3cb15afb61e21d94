"""Exact parameter counts and training-memory estimates for plan sites.

Every count here is closed-form arithmetic on shapes, chosen to equal what
PEFT allocates for the same method (``get_peft_model(...).
get_nb_trainable_parameters()``), so a plan's numbers can be checked against
PEFT without building either model:

* LoRA on a Linear, GPT-2 ``Conv1D`` or Embedding: ``A`` is ``r x in`` and
  ``B`` is ``out x r`` (an Embedding's "in" is its vocabulary), so
  ``r * (in + out)``; ``bias`` adds ``B``'s bias (``out``), DoRA adds its
  magnitude vector (``out``).
* IA3: one vector over the output (``out``), or over the input for
  feed-forward modules (``in``).
* Bottleneck adapter: ``down`` (``dim x size`` + ``size`` bias) and ``up``
  (``size x dim`` + ``dim`` bias).
* Prompt: ``tokens x dim``; tune: the numel; sparse: ``k`` trained entries.

Memory estimates follow the usual mixed set-up: the frozen base in its own
dtype (quantized weights at their packed size), adapter weights, gradients and
AdamW's two moments in fp32. The ``make_*_site`` functions turn a bound
module (or parameter) and its resolved properties into the plan's site record.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from adaptlang.plan.ties import site_slots, tie_group, tie_groups

__all__ = [
    "ADAM_STATES", "FP32_BYTES", "QUANT_SCALE_BLOCK",
    "count_adapter", "count_ia3", "count_lora", "count_numel", "count_prompt",
    "count_sparse", "dtype_bytes", "estimate_task_memory", "quantized_bytes",
    "size_from_reduction", "sum_param_bytes", "make_adapter_site", "make_ia3_site",
    "make_lora_site", "make_prompt_site", "make_quantize_site", "make_sparse_site",
    "make_tune_site", "count_task", "estimate_plan_task_memory", "find_canonical_param",
    "find_dominant_dtype", "list_unique_params",
]

#: Bytes of one fp32 value: trainable weights, gradients and optimizer states.
FP32_BYTES = 4
#: AdamW keeps two moments per trainable value.
ADAM_STATES = 2
#: With double quantization, the per-block fp32 scales are themselves
#: quantized to 8 bits in blocks of 256 (QLoRA, bitsandbytes), each of those
#: blocks keeping one fp32 scale.
QUANT_SCALE_BLOCK = 256

_DTYPE_BYTES = {
    "float64": 8, "double": 8, "int64": 8, "complex64": 8, "uint64": 8,
    "float32": 4, "float": 4, "int32": 4, "uint32": 4,
    "float16": 2, "half": 2, "bfloat16": 2, "int16": 2, "uint16": 2,
    "int8": 1, "uint8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}

#: Packed bits per weight of each quantization format.
_QUANT_BITS = {"nf4": 4, "int8": 8}


def count_lora(in_features: int, out_features: int, rank: int, *, bias: bool = False,
               variant: str = "lora") -> int:
    """Counts one LoRA site's parameters.

    Args:
        in_features: Input width (an Embedding's vocabulary size).
        out_features: Output width (an Embedding's dimension).
        rank: The site's resolved rank.
        bias: Whether ``B`` has a bias (PEFT ``lora_bias``).
        variant: ``lora``, ``rslora`` (same shapes) or ``dora`` (adds a
            magnitude per output).

    Returns:
        ``rank * (in + out)``, plus ``out`` for a bias and ``out`` for DoRA.
    """
    count = rank * (in_features + out_features)
    if bias:
        count += out_features
    if variant == "dora":
        count += out_features
    return count


def count_ia3(in_features: int, out_features: int, *, feedforward: bool = False) -> int:
    """Counts one IA3 vector: over the output, or over the input (feed-forward)."""
    return in_features if feedforward else out_features


def count_adapter(dim: int, size: int) -> int:
    """Counts a bottleneck adapter: ``2 * dim * size + size + dim`` (weights and biases)."""
    return 2 * dim * size + size + dim


def size_from_reduction(dim: int, reduction: float) -> int:
    """Returns the bottleneck width for a reduction factor: ``dim // reduction``.

    Floor division keeps the width an integer the same way ``adapter-transformers``
    does (``hidden_size // reduction_factor``); a width below 1 is the caller's
    error to report.
    """
    return int(dim // reduction)


def count_prompt(tokens: int, dim: int) -> int:
    """Counts soft-prompt vectors: ``tokens * dim``."""
    return tokens * dim


def count_numel(shape: Iterable[int]) -> int:
    """Counts the entries of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(int(n) for n in shape)


def count_sparse(density: float, numel: int) -> int:
    """Counts the entries a sparse delta trains: ``max(1, round(density * numel))``.

    ``round`` is Python's (ties to even), stated here so that other
    implementations can reproduce the count exactly.
    """
    return max(1, round(density * numel))


def dtype_bytes(dtype: str) -> int:
    """Returns the bytes per element of a dtype name (``"float16"``, ``"torch.bfloat16"``).

    Unknown names count as 4 bytes: an estimate, not an error.
    """
    return _DTYPE_BYTES.get(dtype.removeprefix("torch."), FP32_BYTES)


def quantized_bytes(numel: int, fmt: str, block: int, double: bool) -> int:
    """Returns a weight's size after blockwise quantization, scales included.

    Each block of ``block`` values keeps one fp32 absmax scale. With ``double``
    those scales are stored in 8 bits instead, plus one fp32 scale per
    :data:`QUANT_SCALE_BLOCK` scales and one fp32 offset per weight (the mean
    subtracted from the scales before quantizing them, as bitsandbytes keeps
    it): the QLoRA layout, 0.127 instead of 0.5 extra bits per weight at
    block 64.

    Args:
        numel: Entries in the weight.
        fmt: ``nf4`` (4 bits, two per byte) or ``int8``.
        block: Values per quantization block.
        double: Quantize the scales too.

    Returns:
        Packed weight bytes plus scale bytes.
    """
    packed = math.ceil(numel * _QUANT_BITS[fmt] / 8)
    blocks = math.ceil(numel / block)
    if double:
        scales = blocks + FP32_BYTES * math.ceil(blocks / QUANT_SCALE_BLOCK) + FP32_BYTES
    else:
        scales = FP32_BYTES * blocks
    return packed + scales


def sum_param_bytes(params: Iterable[tuple[str, tuple[int, ...], str]],
                    replaced: dict[str, int] | None = None) -> int:
    """Sums the bytes of parameters in their dtypes.

    Args:
        params: ``(param path, shape, dtype)`` for each unique parameter.
        replaced: Bytes to use instead for some paths (quantized weights).

    Returns:
        Total bytes.
    """
    replaced = replaced or {}
    total = 0
    for path, shape, dtype in params:
        size = replaced.get(path)
        total += size if size is not None else count_numel(shape) * dtype_bytes(dtype)
    return total


def estimate_task_memory(base_bytes: int, trainable_params: int, frozen_delta_params: int,
                         released_base_bytes: int = 0) -> dict[str, int]:
    """Estimates the memory to train one task (weights, gradients, AdamW).

    Args:
        base_bytes: The whole base model in its dtypes, quantized sites at
            their quantized size.
        trainable_params: Parameters the task trains (fp32 each, with an fp32
            gradient and two fp32 AdamW moments).
        frozen_delta_params: Parameters of deltas the task uses frozen (fp32).
        released_base_bytes: Base parameters the task's tune deltas replace
            with their own fp32 copies (not held twice).

    Returns:
        ``frozen_bytes``, ``trainable_bytes``, ``gradient_bytes``,
        ``optimizer_bytes`` and their ``total_bytes``.
    """
    frozen = base_bytes - released_base_bytes + FP32_BYTES * frozen_delta_params
    trainable = FP32_BYTES * trainable_params
    memory = {
        "frozen_bytes": frozen,
        "trainable_bytes": trainable,
        "gradient_bytes": trainable,
        "optimizer_bytes": ADAM_STATES * trainable,
    }
    memory["total_bytes"] = sum(memory.values())
    return memory


# ----------------------------------------------------------------------
# Site records: one plan site per bound module or parameter, with its count.


def make_lora_site(path: str, cls: str, in_features: int, out_features: int,
                   props: dict[str, Any]) -> dict[str, Any]:
    """Returns a LoRA site record; ``alpha`` None means the site's rank."""
    rank = int(props["rank"])
    alpha = props["alpha"] if props["alpha"] is not None else rank
    return {
        "path": path, "module": cls, "in_features": in_features, "out_features": out_features,
        "params": count_lora(in_features, out_features, rank, bias=bool(props["bias"]),
                             variant=props["variant"]),
        "rank": rank, "alpha": float(alpha), "dropout": float(props["dropout"]),
        "init": props["init"], "variant": props["variant"], "bias": bool(props["bias"]),
    }


def make_ia3_site(path: str, cls: str, in_features: int, out_features: int,
                  props: dict[str, Any]) -> dict[str, Any]:
    """Returns an IA3 site record."""
    feedforward = bool(props["feedforward"])
    return {
        "path": path, "module": cls, "in_features": in_features, "out_features": out_features,
        "params": count_ia3(in_features, out_features, feedforward=feedforward),
        "init": props["init"], "feedforward": feedforward,
    }


def make_adapter_site(path: str, cls: str, placement: str, dim: int, size: int,
                      props: dict[str, Any]) -> dict[str, Any]:
    """Returns a bottleneck adapter site record (``size`` already resolved)."""
    return {
        "path": path, "module": cls, "placement": placement, "dim": dim, "size": size,
        "act": props["act"], "dropout": float(props["dropout"]), "scale": float(props["scale"]),
        "residual": bool(props["residual"]), "params": count_adapter(dim, size),
    }


def make_prompt_site(path: str, cls: str, tokens: int, dim: int, init: str,
                     text: str | None) -> dict[str, Any]:
    """Returns a soft-prompt site record; ``text`` only for ``init text``."""
    site = {"path": path, "module": cls, "tokens": tokens, "dim": dim, "init": init,
            "params": count_prompt(tokens, dim)}
    if init == "text":
        site["text"] = text or ""
    return site


def make_tune_site(path: str, param: str, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
    """Returns a tune site record: one existing parameter re-trained."""
    return {"path": path, "param": param, "shape": list(shape), "dtype": dtype,
            "params": count_numel(shape)}


def make_sparse_site(path: str, param: str, shape: tuple[int, ...],
                     props: dict[str, Any]) -> dict[str, Any]:
    """Returns a sparse site record: ``k`` trained entries of one parameter."""
    density = float(props["density"])
    k = count_sparse(density, count_numel(shape))
    return {"path": path, "param": param, "shape": list(shape), "density": density, "k": k,
            "select": props["select"], "seed": int(props["seed"]), "params": k}


def make_quantize_site(path: str, cls: str, shape: tuple[int, ...], dtype: str, fmt: str,
                       props: dict[str, Any]) -> dict[str, Any]:
    """Returns a quantized-weight record with its size before and after."""
    numel = count_numel(shape)
    return {
        "path": path, "module": cls, "param": "weight", "shape": list(shape), "format": fmt,
        "block": int(props["block"]), "double": bool(props["double"]), "compute": props["compute"],
        "bytes_before": numel * dtype_bytes(dtype),
        "bytes_after": quantized_bytes(numel, fmt, int(props["block"]), bool(props["double"])),
    }


# ----------------------------------------------------------------------
# Whole-model and per-task accounting.


def find_canonical_param(sig: Any, path: str, param: str) -> tuple[str, str]:
    """Returns ``(module path, name)`` of the first owner of a possibly tied parameter."""
    full = f"{path}.{param}" if path else param
    first = sig.tied.get(full, full)
    if first == full:
        return (path, param)
    head, _, tail = first.rpartition(".")
    return (head, tail)


def list_unique_params(sig: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """Returns ``(param path, shape, dtype)`` of every parameter, tied copies once."""
    found = []
    for path, info in sig.modules.items():
        for p in info.params:
            full = f"{path}.{p.name}" if path else p.name
            if sig.tied.get(full, full) == full:
                found.append((full, tuple(p.shape), p.dtype))
    return found


def find_dominant_dtype(sig: Any) -> str:
    """Returns the dtype holding the most parameters (ties: alphabetical), the model's dtype."""
    totals: dict[str, int] = {}
    for _, shape, dtype in list_unique_params(sig):
        totals[dtype] = totals.get(dtype, 0) + count_numel(shape)
    return min(totals, key=lambda d: (-totals[d], d)) if totals else "float32"


def count_task(terms: list[dict[str, Any]], delta_params: dict[str, int]) -> dict[str, int]:
    """Counts a task's parameters: ``trainable_params`` (non-frozen deltas), ``bundle_params`` (all)."""
    return {
        "trainable_params": sum(delta_params[t["name"]] for t in terms if not t["frozen"]),
        "bundle_params": sum(delta_params[t["name"]] for t in terms),
    }


def estimate_plan_task_memory(sig: Any, task: dict[str, Any], deltas: dict[str, dict[str, Any]],
                              base_bytes: int) -> dict[str, int]:
    """Estimates one task's training memory from plan sections.

    Args:
        sig: The model's signature (to dedupe tied parameters).
        task: The task's plan section (``deltas``, counts).
        deltas: The plan's delta sections.
        base_bytes: :func:`sum_param_bytes` of the base, quantized sites packed.

    Returns:
        The task's ``memory`` section.
    """
    frozen = sum(deltas[t["name"]]["params"] for t in task["deltas"] if t["frozen"])
    covered: dict[str, set[str]] = {}  # tensor (first name) -> its names the task's tune copies fill
    sizes: dict[str, int] = {}
    for term in task["deltas"]:
        if deltas[term["name"]]["kind"] != "tune":
            continue
        for site in deltas[term["name"]]["sites"]:
            slots = site_slots(site)
            first = sig.tied.get(slots[0], slots[0])
            covered.setdefault(first, set()).update(slots)
            sizes[first] = site["params"] * dtype_bytes(site["dtype"])
    # A tune copy replaces the base tensor only when no name of it still uses the original (a tie
    # the task unties keeps it in memory).
    groups = tie_groups(sig) if covered and sig.tied else {}
    released = sum(sizes[first] for first, names in covered.items()
                   if names >= set(tie_group(sig, first, groups)))
    return estimate_task_memory(base_bytes, task["trainable_params"], frozen, released)
