"""Importing a PEFT adapter folder: a ``.adapt`` spec plus a bundle that loads with ``adaptlang.load``.

The sites come from the adapter's tensor keys (not from ``target_modules``,
whose regexes and layer filters the keys already resolve), ranks from the
tensors' shapes, alphas from ``lora_alpha``/``alpha_pattern`` (PEFT's own
matching rule), and the spec is compiled against the base model before any
file is written, so what is written loads back. Only safetensors adapters
are read: an ``adapter_model.bin`` is a pickle, which adaptlang never opens.

Supported: LoRA (plain, rsLoRA, DoRA, with a LoRA bias; Linear, Conv1D and
Embedding), IA3 and prompt tuning (causal LMs) — the same set that export
writes, so PEFT -> adaptlang -> PEFT round-trips.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from adaptlang.bundles.bundle import build_bundle, check_bundle_tensors, write_bundles
from adaptlang.bundles.files import check_finite, make_folder, read_header, read_tensors
from adaptlang.bundles.manifest import Provenance, describe_structure, restrict_plan
from adaptlang.bundles.peft_config import read_peft_config
from adaptlang.bundles.peft_common import PREFIX, match_pattern_key, most_common
from adaptlang.bundles.spec_writer import paths_selector, render_block
from adaptlang.errors import BundleError, Diagnostic, UsageError
from adaptlang.syntax.render import render_string

__all__ = ["PeftImportWarning", "import_peft_adapter", "safe_name"]

#: PEFT key suffix -> our local name, per layer layout.
_LORA_SUFFIXES = {
    ".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B", ".lora_B.bias": "lora_bias",
    ".lora_embedding_A": "lora_A", ".lora_embedding_B": "lora_B", ".lora_magnitude_vector": "magnitude",
}
_KEYWORDS = {"adaptlang", "model", "let", "use", "quantize", "task", "for", "is", "except", "frozen"}


class PeftImportWarning(UserWarning):
    """Something in the PEFT folder was left out on purpose (e.g. a saved copy of a base layer)."""


def safe_name(text: str) -> str:
    """Turns a folder name into a spec identifier (``my-adapter`` -> ``my_adapter``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "adapter"
    if name[0].isdigit():
        name = "a_" + name
    return name + "_adapter" if name in _KEYWORDS else name


def _err(folder: Path, message: str, **kwargs: Any) -> BundleError:
    return BundleError(Diagnostic(message, obj=str(folder), **kwargs))


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (never a pickle)."""
    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise _err(folder, "not a PEFT adapter folder: no adapter_config.json")
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise _err(folder, "adapter_model.bin is a pickle, which adaptlang never loads (it can run code)",
                       hint="convert it to safetensors with PEFT: model.save_pretrained(dir, safe_serialization=True)")
        raise _err(folder, "not a PEFT adapter folder: no adapter_model.safetensors")
    config = read_peft_config(config_file)
    tensors = read_tensors(read_header(weights))
    for key, value in tensors.items():
        if not value.is_floating_point():  # every PEFT adapter tensor holds values, not positions
            raise _err(weights, f"tensor '{key}' has dtype {value.dtype}, expected floating-point values")
    check_finite(weights, tensors)
    return config, tensors


def _split_keys(folder: Path, tensors: dict[str, torch.Tensor], suffixes: dict[str, str]
                ) -> dict[str, dict[str, torch.Tensor]]:
    """Groups PEFT tensors by module path: ``{path: {local name: tensor}}``."""
    sites: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        rest = key[len(PREFIX):] if key.startswith(PREFIX) else None
        hit = next((s for s in suffixes if rest is not None and rest.endswith(s)), None)
        if hit is None:
            if rest is not None and rest.endswith(".base_layer.weight"):
                warnings.warn(f"{key}: a saved copy of a base layer (PEFT's save_embedding_layers) is not "
                              "imported; the base model's own weights are used", PeftImportWarning, stacklevel=3)
                continue
            unknown.append(key)
            continue
        sites.setdefault(rest[: -len(hit)], {})[suffixes[hit]] = value
    if unknown:
        raise _err(folder, "the adapter holds tensors adaptlang cannot import", notes=tuple(unknown[:5]),
                   hint="modules_to_save and trainable tokens have no adaptlang delta")
    return dict(sorted(sites.items()))


def _override_lines(key: str, values: dict[str, Any], default: Any, fmt: Any) -> list[tuple[str, str]]:
    """``key VALUE for SELECTOR`` lines for the sites whose value differs from the block's."""
    groups: dict[Any, list[str]] = {}
    for path, value in values.items():
        if value != default:
            groups.setdefault(value, []).append(path)
    return [(key, f"{fmt(v)} for {paths_selector(paths)}") for v, paths in sorted(groups.items())]


def _num(value: float) -> str:
    """A number as spec text."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _lora(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], delta: str
          ) -> tuple[str, dict[str, torch.Tensor]]:
    """Returns the LoRA block and our bundle tensors."""
    sites = _split_keys(folder, tensors, _LORA_SUFFIXES)
    if not sites:
        raise _err(folder, "the adapter holds no LoRA tensors")
    ranks, alphas = {}, {}
    for path, local in sites.items():
        if "lora_A" not in local or "lora_B" not in local:
            raise _err(folder, f"module '{path}' lacks lora_A or lora_B")
        a, b = local["lora_A"], local["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise _err(folder, f"module '{path}': lora_A has shape {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                               "expected (r, in) and (out, r) with the same r >= 1")
        ranks[path] = int(a.shape[0])
        want = config.get("rank_pattern") or {}
        key = match_pattern_key(want, path)
        expected = int(want[key]) if key is not None else int(config.get("r") or ranks[path])
        if expected != ranks[path]:
            raise _err(folder, f"module '{path}': the config says rank {expected}, its tensors have {ranks[path]}")
        apat = config.get("alpha_pattern") or {}
        key = match_pattern_key(apat, path)
        alphas[path] = float(apat[key]) if key is not None else float(config.get("lora_alpha") or 8)
    variant = "dora" if config.get("use_dora") else "rslora" if config.get("use_rslora") else "lora"
    if variant == "dora" and any("magnitude" not in local for local in sites.values()):
        raise _err(folder, "use_dora is set but a module has no lora_magnitude_vector")
    rank, alpha = most_common(ranks.values()), most_common(alphas.values())
    lines = [("on", paths_selector(sites)), ("rank", str(rank)), ("alpha", _num(alpha))]
    lines += _override_lines("rank", ranks, rank, str) + _override_lines("alpha", alphas, alpha, _num)
    if float(config.get("lora_dropout") or 0.0):
        lines.append(("dropout", _num(float(config["lora_dropout"]))))
    if variant != "lora":
        lines.append(("variant", variant))
    if config.get("lora_bias"):
        lines.append(("bias", "true"))
    ours = {f"{delta}/{path}/{name}": value for path, local in sites.items() for name, value in local.items()}
    return render_block("lora", delta, lines), ours


def _ia3(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], delta: str
         ) -> tuple[str, dict[str, torch.Tensor]]:
    """Returns the IA3 block and our bundle tensors (vectors flattened to (n,))."""
    sites = _split_keys(folder, tensors, {".ia3_l": "ia3_l"})
    if not sites:
        raise _err(folder, "the adapter holds no IA3 tensors")
    ff_cfg = config.get("feedforward_modules") or []
    feedforward = {}
    for path, local in sites.items():
        if isinstance(ff_cfg, str):
            feedforward[path] = re.fullmatch(ff_cfg, path) is not None
        else:
            feedforward[path] = any(path.endswith(t) for t in ff_cfg)  # PEFT's rule
        want = (1, -1) if feedforward[path] else (-1, 1)
        shape = tuple(local["ia3_l"].shape)
        if len(shape) != 2 or shape[0 if feedforward[path] else 1] != 1:
            raise _err(folder, f"module '{path}': ia3_l has shape {shape}, expected {want} for "
                               f"{'a feedforward' if feedforward[path] else 'an output'} module")
    lines = [("on", paths_selector(sites))]
    lines += _override_lines("feedforward", feedforward, False, lambda v: "true")
    ours = {f"{delta}/{path}/ia3_l": local["ia3_l"].reshape(-1) for path, local in sites.items()}
    return render_block("ia3", delta, lines), ours


def _prompt(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], delta: str
            ) -> tuple[str, dict[str, torch.Tensor]]:
    """Returns the prompt block and the bundle tensor; the embedding path is found at compile time."""
    if config.get("task_type") != "CAUSAL_LM" or int(config.get("num_transformer_submodules") or 1) != 1:
        raise _err(folder, "only causal-LM prompt tuning imports (one transformer submodule)",
                   notes=(f"task_type: {config.get('task_type')}",))
    if set(tensors) != {"prompt_embeddings"}:
        raise _err(folder, "a prompt-tuning adapter holds exactly 'prompt_embeddings'",
                   notes=tuple(sorted(tensors)[:5]))
    value = tensors["prompt_embeddings"]
    if value.dim() != 2 or value.shape[0] < 1:
        raise _err(folder, f"prompt_embeddings has shape {tuple(value.shape)}, expected (tokens, dim)")
    init = {"TEXT": None, "SAMPLE_VOCAB": "vocab"}.get(str(config.get("prompt_tuning_init")), "random")
    text = config.get("prompt_tuning_init_text")
    init_text = f"text {render_string(text)}" if init is None and isinstance(text, str) else (init or "random")
    block = render_block("prompt", delta, [("tokens", str(value.shape[0])), ("init", init_text)])
    return block, {f"{delta}/<embed>/weight": value}


def import_peft_adapter(folder: Any, model: Any, out: Any, name: str | None = None, *,
                        allow_factory: bool = False) -> tuple[Path, Path]:
    """Converts a PEFT adapter folder into ``OUT/<name>.adapt`` and ``OUT/<name>.safetensors``.

    Args:
        folder: The PEFT adapter folder.
        model: The base model: an ``nn.Module``, a preset name, a model
            directory or ``pkg.module:factory``; None uses the config's
            ``base_model_name_or_path`` (which must then be one of those).
        out: The output folder (created if missing).
        name: The task's name (default: from the folder's name); the delta
            is ``<name>_lora`` / ``_ia3`` / ``_prompt``.
        allow_factory: Let ``base_model_name_or_path`` (read from the
            folder) name a ``pkg.module:factory``, which is then run; a
            ``model`` passed here is the caller's own and always may.

    Returns:
        ``(spec path, bundle path)``; both are written atomically, together.

    Raises:
        BundleError: Not a PEFT folder, a pickle, an unsupported PEFT type,
            or tensors that do not fit the model.
        UsageError: No model known.
        FactoryRefusedError: ``base_model_name_or_path`` names a factory and
            ``allow_factory`` is False (a UsageError).
    """
    from adaptlang import __version__
    from adaptlang.plan.compiler import compile_plan, resolve_signature
    from adaptlang.plan.plan import Plan
    from adaptlang.spec.lower import lower_text
    from adaptlang.syntax.format import format_text

    folder, out = Path(folder), Path(out)
    config, tensors = _read_folder(folder)
    task = safe_name(name or folder.resolve().name)
    kind = str(config.get("peft_type", "")).upper()
    builders = {"LORA": ("lora", _lora), "IA3": ("ia3", _ia3), "PROMPT_TUNING": ("prompt", _prompt)}
    if kind not in builders:
        raise _err(folder, f"PEFT type {kind or '(none)'} cannot be imported",
                   hint="adaptlang imports LORA, IA3 and PROMPT_TUNING adapters")
    suffix, build = builders[kind]
    delta = f"{task}_{suffix}"
    block, ours = build(folder, config, tensors, delta)
    ref = model if model is not None else config.get("base_model_name_or_path")
    if ref is None:
        raise UsageError(Diagnostic("no base model: the adapter names none", obj=str(folder),
                                    hint="pass --model (a preset, a model folder, a hub id or pkg.module:factory)"))
    header = "adaptlang 1\n" + (f"model {render_string(ref)}\n" if isinstance(ref, str) else "")
    # A folder name need not be UTF-8 (bytes the OS gave as surrogates): the spec shows those bytes as \xNN.
    shown = folder.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = f"# Imported from the PEFT adapter '{shown}' ({kind}).\n{header}\n{block}\ntask {task} = {delta}\n"
    spec_name = f"{task}.adapt"
    text = format_text(text, spec_name)
    spec = lower_text(text, spec_name, Path("."))
    # The config's base model is a file's word: it may not run code unless the caller allows it.
    sig = resolve_signature(ref, allow_factory=model is not None or allow_factory,
                            source=str(folder / "adapter_config.json"), what="base_model_name_or_path")
    plan = compile_plan(spec, sig)
    plan_dict = plan.to_dict()
    if suffix == "prompt":
        embed = plan_dict["deltas"][delta]["sites"][0]["path"]
        ours = {k.replace("/<embed>/", f"/{embed}/"): v for k, v in ours.items()}
    task_plan = Plan(restrict_plan(plan_dict, [task])).to_dict()
    check_bundle_tensors(str(folder), ours, task_plan, task)
    bundle = build_bundle(out / f"{task}.safetensors", task, task_plan, ours,
                          Provenance.from_spec(spec, plan.sha256), describe_structure(sig), __version__)
    make_folder(out)
    spec_path = out / spec_name
    (bundle_path,) = write_bundles([bundle], extra=[(spec_path, lambda h: h.write(text.encode("utf-8")))])
    return spec_path, bundle_path
