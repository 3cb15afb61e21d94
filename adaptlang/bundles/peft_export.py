"""Exporting a task as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

One PEFT adapter is one kind of tuner, so a task exports when its deltas are

* only LoRA (``lora``, ``rslora`` or ``dora``; one variant and one bias
  setting for the whole task; PEFT's single ``lora_dropout`` takes the value
  most sites use, with a :class:`PeftExportWarning` when deltas differ):
  per-site ranks and alphas become ``rank_pattern``/``alpha_pattern``; a
  task weight ``w`` is folded into the site's alpha (``w * alpha``), which
  is exact for plain LoRA and rsLoRA;
  several LoRA deltas on one module become one LoRA of the summed rank
  (``A = cat(A_i)``, ``B = cat(c_i B_i)``, alpha chosen so PEFT's scaling is
  1), which is the product our runtime computes;
* only IA3: a weight ``w`` turns the vector into ``1 + w (v - 1)``, and
  several IA3 deltas on one side of a module multiply into one vector;
* exactly one prompt delta, on a causal LM.

Everything else is refused with a :class:`~adaptlang.errors.BundleError`
naming the deltas at fault: bottleneck adapters, sparse and tune deltas
(PEFT has no form for them), a mix of kinds, a weighted DoRA (PEFT's DoRA
norm sees the unweighted update), IA3 scaling both the input and the output
of one module, or settings PEFT holds once per adapter that differ.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from adaptlang.bundles.files import make_folder, write_files, write_safetensors
from adaptlang.bundles.peft_common import (
    PREFIX, is_conv1d, is_embedding, most_common, pattern_key, peft_task_type, target_modules,
)
from adaptlang.errors import BundleError, Diagnostic

__all__ = ["PeftExportWarning", "export_bundle", "export_peft_adapter"]


class PeftExportWarning(UserWarning):
    """An export that is exact in outputs but approximates a training-only setting."""

#: Why PEFT cannot hold a delta kind.
_NO_PEFT_FORM = {
    "adapter": "bottleneck adapters have no PEFT form",
    "sparse": "sparse deltas have no PEFT form",
    "tune": "re-trained base parameters (tune) have no PEFT adapter form",
}


def _refuse(task: str, faults: list[tuple[str, str]]) -> BundleError:
    """The error for a task PEFT cannot express; ``faults`` are ``(delta, reason)``."""
    names = ", ".join(f"'{d}'" for d in dict.fromkeys(d for d, _ in faults))
    return BundleError(Diagnostic(
        f"task '{task}' cannot be exported to PEFT: {names} cannot be expressed", obj=task,
        notes=tuple(dict.fromkeys(f"delta '{d}': {why}" for d, why in faults)),
        hint="export a task made only of LoRA, only of IA3, or of one prompt delta"))


def _entries(plan: dict[str, Any], task: str, tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Lists every (delta, site) of the task with its weight, kind and tensors, in task order."""
    out = []
    for term in plan["tasks"][task]["deltas"]:
        delta = plan["deltas"][term["name"]]
        for site in delta["sites"]:
            prefix = f"{term['name']}/{site['path']}/"
            local = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            out.append({"delta": term["name"], "kind": delta["kind"], "weight": float(term["weight"]),
                        "site": site, "tensors": local})
    return out


def _check_kinds(task: str, entries: list[dict[str, Any]]) -> str:
    """Returns the one tuner kind of the task, or raises naming the deltas PEFT cannot take."""
    faults = [(e["delta"], _NO_PEFT_FORM[e["kind"]]) for e in entries if e["kind"] in _NO_PEFT_FORM]
    if faults:
        raise _refuse(task, faults)
    kinds = {e["kind"] for e in entries}
    if not kinds:
        raise BundleError(Diagnostic(f"task '{task}' has no deltas to export", obj=task))
    if len(kinds) > 1:
        by_kind = {k: sorted({e["delta"] for e in entries if e["kind"] == k}) for k in sorted(kinds)}
        raise _refuse(task, [(d, f"a {k} delta; one PEFT adapter holds one kind "
                                 f"(this task mixes {', '.join(sorted(kinds))})")
                             for k, ds in by_kind.items() for d in ds])
    return kinds.pop()


def _uniform(task: str, entries: list[dict[str, Any]], key: str, default: Any, what: str) -> Any:
    """Returns the one value a per-adapter PEFT setting takes, or refuses naming the deltas that differ."""
    values = {e["delta"]: e["site"].get(key, default) for e in entries}
    if len(set(values.values())) > 1:
        raise _refuse(task, [(d, f"{what} is {v!r}; PEFT has one {what} per adapter") for d, v in values.items()])
    return next(iter(values.values()))


def _choose_dropout(entries: list[dict[str, Any]]) -> float:
    """Returns the dropout most sites use; warns when deltas differ.

    Why not refuse: PEFT holds one ``lora_dropout`` per adapter, and dropout
    changes only further training, never the adapter's outputs.
    """
    dropouts = {e["delta"]: float(e["site"].get("dropout", 0.0)) for e in entries}
    chosen = most_common(float(e["site"].get("dropout", 0.0)) for e in entries)
    others = sorted(f"'{d}' ({v:g})" for d, v in dropouts.items() if v != chosen)
    if others:
        warnings.warn(f"PEFT holds one lora_dropout per adapter: exported {chosen:g}; {', '.join(others)} "
                      "differ (this changes further training only, not outputs)", PeftExportWarning, stacklevel=3)
    return chosen


def _number(value: float) -> float | int:
    """Writes integral floats as ints (PEFT configs usually hold ints)."""
    return int(value) if float(value).is_integer() else float(value)


def _export_lora(task: str, entries: list[dict[str, Any]], structure: dict[str, str] | None
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Returns the LoRA config fields and PEFT tensors (module docstring)."""
    variant = _uniform(task, entries, "variant", "lora", "variant")
    dropout = _choose_dropout(entries)
    bias = _uniform(task, entries, "bias", False, "bias setting")
    by_path: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_path.setdefault(e["site"]["path"], []).append(e)
    if variant == "dora":
        faults = [(e["delta"], "DoRA with a LoRA bias; PEFT has no such combination") for e in entries if bias]
        faults += [(e["delta"], f"a DoRA delta at weight {e['weight']:g}; PEFT's DoRA norm would see the "
                               "unweighted update") for e in entries if e["weight"] != 1.0]
        faults += [(e["delta"], f"DoRA deltas stacked on '{p}' cannot be one PEFT DoRA")
                   for p, group in by_path.items() if len(group) > 1 for e in group]
        if faults:
            raise _refuse(task, faults)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    conv1d = False
    for path, group in by_path.items():
        site = group[0]["site"]
        embedding, conv1d = is_embedding(site.get("module")), conv1d or is_conv1d(site.get("module"))
        rank, alpha, a, b, lora_bias = _combine_lora(group, variant)
        ranks[path], alphas[path] = rank, alpha
        key = PREFIX + path
        if embedding:
            tensors[f"{key}.lora_embedding_A"], tensors[f"{key}.lora_embedding_B"] = a, b
        else:
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
        if lora_bias is not None:
            tensors[f"{key}.lora_B.bias"] = lora_bias
        if variant == "dora":
            tensors[f"{key}.lora_magnitude_vector"] = group[0]["tensors"]["magnitude"]
    r = most_common(ranks.values())
    lora_alpha = most_common(alphas.values())
    config = {
        "peft_type": "LORA", "r": r, "lora_alpha": _number(lora_alpha), "lora_dropout": float(dropout),
        "target_modules": target_modules(list(by_path), structure),
        "rank_pattern": {pattern_key(p, structure): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {pattern_key(p, structure): _number(v) for p, v in alphas.items() if v != lora_alpha},
        "use_rslora": variant == "rslora", "use_dora": variant == "dora", "lora_bias": bool(bias),
        "fan_in_fan_out": conv1d, "bias": "none", "init_lora_weights": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None,
    }
    return config, tensors


def _combine_lora(group: list[dict[str, Any]], variant: str
                  ) -> tuple[int, float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns ``(rank, alpha, A, B, bias)`` of one module's LoRA deltas as one PEFT LoRA.

    One delta keeps its factors, with the task weight folded into alpha.
    Several are concatenated (``A = cat(A_i)``, ``B = cat(c_i B_i)``,
    ``bias = sum c_i bias_i``, ``c_i = w_i alpha_i / r_i``) with an alpha
    that makes PEFT's scaling exactly 1 for the summed rank.
    """
    if len(group) == 1:
        e = group[0]
        t = e["tensors"]
        return (int(e["site"]["rank"]), e["weight"] * float(e["site"]["alpha"]), t["lora_A"], t["lora_B"],
                t.get("lora_bias"))
    coefs = []
    for e in group:
        r, alpha = int(e["site"]["rank"]), float(e["site"]["alpha"])
        coefs.append(e["weight"] * (alpha / math.sqrt(r) if variant == "rslora" else alpha / r))
    rank = sum(int(e["site"]["rank"]) for e in group)
    a = torch.cat([e["tensors"]["lora_A"] for e in group], 0)  # (R, in)
    b = torch.cat([e["tensors"]["lora_B"] * c for e, c in zip(group, coefs)], 1)  # (out, R)
    biases = [e["tensors"]["lora_bias"] * c for e, c in zip(group, coefs) if "lora_bias" in e["tensors"]]
    alpha = math.sqrt(rank) if variant == "rslora" else float(rank)
    return rank, alpha, a, b, (sum(biases[1:], biases[0]) if biases else None)


def _export_ia3(task: str, entries: list[dict[str, Any]], structure: dict[str, str] | None
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Returns the IA3 config fields and PEFT tensors (module docstring)."""
    faults = [(e["delta"], f"IA3 on the embedding '{e['site']['path']}'; PEFT's IA3 has no embedding layer")
              for e in entries if is_embedding(e["site"].get("module"))]
    by_path: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_path.setdefault(e["site"]["path"], []).append(e)
    for path, group in by_path.items():
        if len({bool(e["site"].get("feedforward")) for e in group}) > 1:
            faults += [(e["delta"], f"scales both the input and the output of '{path}'; PEFT scales one side")
                       for e in group]
    if faults:
        raise _refuse(task, faults)
    tensors, feedforward, conv1d = {}, [], False
    for path, group in by_path.items():
        factor = None
        for e in group:  # the runtime's factor: v, or 1 + w (v - 1); several multiply, in task order
            v = e["tensors"]["ia3_l"]
            f = v if e["weight"] == 1.0 else 1.0 + e["weight"] * (v - 1.0)
            factor = f if factor is None else factor * f
        ff = bool(group[0]["site"].get("feedforward"))
        tensors[f"{PREFIX}{path}.ia3_l"] = factor.reshape(1, -1) if ff else factor.reshape(-1, 1)
        if ff:
            feedforward.append(path)
        conv1d = conv1d or is_conv1d(group[0]["site"].get("module"))
    targets = target_modules(list(by_path), structure)
    ff_list = sorted(feedforward)
    if targets != sorted(by_path):  # names: feedforward ones by name too, if PEFT's rule picks exactly them
        ff_list = sorted({p.rsplit(".", 1)[-1] for p in feedforward})
        # PEFT: a module is feedforward when its path ends with an entry (plain endswith).
        if {p for p in by_path if any(p.endswith(t) for t in ff_list)} != set(feedforward):
            targets, ff_list = sorted(by_path), sorted(feedforward)
    config = {"peft_type": "IA3", "target_modules": targets, "feedforward_modules": ff_list,
              "fan_in_fan_out": conv1d, "init_ia3_weights": True, "modules_to_save": None}
    return config, tensors


def _export_prompt(task: str, entries: list[dict[str, Any]], task_type: str | None
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Returns the prompt-tuning config fields and PEFT tensors."""
    deltas = sorted({e["delta"] for e in entries})
    if len(deltas) > 1:
        raise _refuse(task, [(d, "one of several prompt deltas; a PEFT adapter has one prompt") for d in deltas])
    if task_type != "CAUSAL_LM":
        raise _refuse(task, [(deltas[0], "prompt export is supported for causal LMs only "
                                         "(PEFT prepends prompts differently for other task types)")])
    site = entries[0]["site"]
    init = {"vocab": "SAMPLE_VOCAB"}.get(site.get("init"), "RANDOM")  # values come from the file anyway
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": int(site["tokens"]), "token_dim": int(site["dim"]),
              "num_transformer_submodules": 1, "num_attention_heads": None, "num_layers": None,
              "prompt_tuning_init": init, "prompt_tuning_init_text": None, "tokenizer_name_or_path": None}
    return config, {"prompt_embeddings": entries[0]["tensors"]["weight"]}


def export_peft_adapter(plan: dict[str, Any], task: str, tensors: dict[str, torch.Tensor], folder: Path,
                        structure: dict[str, str] | None = None, base_model: str | None = None) -> Path:
    """Writes one task as a PEFT adapter folder.

    Args:
        plan: A plan JSON dict holding the task (a bundle's task plan).
        task: The task.
        tensors: Its bundle tensors (``"{delta}/{site path}/{local name}"``).
        folder: Where ``adapter_config.json`` and ``adapter_model.safetensors`` go (created if missing).
        structure: The base model's modules (shorter, still exact, ``target_modules``).
        base_model: ``base_model_name_or_path`` (default: the plan's model name).

    Returns:
        The folder.

    Raises:
        BundleError: A task PEFT cannot express (module docstring), naming the deltas at fault.
    """
    entries = _entries(plan, task, tensors)
    kind = _check_kinds(task, entries)
    task_type = peft_task_type(plan["model"]["cls"])
    if kind == "lora":
        config, out = _export_lora(task, entries, structure)
    elif kind == "ia3":
        config, out = _export_ia3(task, entries, structure)
    else:
        config, out = _export_prompt(task, entries, task_type)
    config.update({"task_type": task_type, "base_model_name_or_path": base_model or plan["model"]["name"],
                   "inference_mode": True, "revision": None})
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    out = {k: v.detach().to("cpu").contiguous() for k, v in out.items()}
    folder = make_folder(folder)
    write_files([
        (folder / "adapter_model.safetensors", lambda h: write_safetensors(h, out, {"format": "pt"})),
        (folder / "adapter_config.json", lambda h: h.write(text.encode("utf-8"))),
    ])
    return folder


def export_bundle(path: Any, folder: Any, base_model: str | None = None) -> Path:
    """Converts a bundle file into a PEFT adapter folder (no model needed).

    Raises:
        BundleError: A bad bundle, or a task PEFT cannot express.
    """
    from adaptlang.bundles.bundle import read_bundle

    bundle = read_bundle(path)
    return export_peft_adapter(bundle.task_plan, bundle.task, bundle.tensors, Path(folder), bundle.structure,
                               base_model)
