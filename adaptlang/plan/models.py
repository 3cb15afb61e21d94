"""Models without weights: presets, Hugging Face directories and factories.

The planner works on a model's structure only, so models are built on the
``meta`` device: every parameter has a shape and a dtype but no storage, and a
70B model is built in a fraction of a second. Three kinds of reference are
accepted by :func:`load_model`:

* a **preset** name (``llama``, ``gpt2``, ``tiny-llama``, ...): a
  ``transformers`` config with the published numbers of that checkpoint,
  built without the hub;
* a local **Hugging Face model directory** (its ``config.json`` only; nothing
  is ever downloaded and weights are never read);
* ``package.module:factory``: a callable returning any ``nn.Module``, called
  under ``torch.device("meta")`` when compiling: it must build from a config,
  not load weights (``from_pretrained`` and ``torch.load`` fail there).
* a **Hugging Face hub id** (``org/name``, ``org/name@revision``): its
  ``config.json`` only, through ``huggingface_hub``'s cache (see
  :mod:`adaptlang.plan.hub`); the model is named by the hub id.

Small ``tiny-*`` presets (2 layers, width 32) can also be built with real
random weights on the CPU, for tests and demos.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from adaptlang.errors import Diagnostic, UsageError, did_you_mean
from adaptlang.limits import MAX_NUM_LABELS
from adaptlang.plan.model_config import read_config
from adaptlang.plan.factories import (ALLOW_FACTORY_FLAG, FACTORY_REF, FactoryRefusedError, is_factory_ref,
                                      refuse_factory)
from adaptlang.plan.presets import PRESETS, Preset, list_presets

__all__ = ["ALLOW_FACTORY_FLAG", "FactoryRefusedError", "HEADS", "Preset", "PRESETS", "head_class",
           "is_factory_ref", "list_presets", "load_model", "refuse_factory"]

_FACTORY_REF = FACTORY_REF


#: ``--head`` values: the task head a model is built with, by its ``transformers`` Auto class.
#: ``base`` is the bare model (``AutoModel``: no head at all).
HEADS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "base": "AutoModel",
}


def head_class(head: str, config: Any, obj: str = "") -> Any:
    """Returns the ``transformers`` class that builds ``config`` with ``head``.

    Args:
        head: A key of :data:`HEADS`.
        config: A ``transformers`` config.
        obj: What to name in an error (the model reference).

    Raises:
        UsageError: An unknown head, or one ``transformers`` has no class for
            with this model type (say, ``seq2seq-lm`` on BERT).
    """
    import transformers

    if head not in HEADS:
        raise UsageError(Diagnostic(f"unknown head '{head}'", obj=obj or head,
                                    hint=did_you_mean(head, HEADS) or "heads: " + ", ".join(HEADS)))
    auto = getattr(transformers, HEADS[head])
    mapping = auto._model_mapping
    if type(config) not in mapping:
        raise UsageError(Diagnostic(
            f"model type '{config.model_type}' has no {head} head in transformers", obj=obj or head,
            hint="heads it has: " + ", ".join(
                h for h, name in HEADS.items() if type(config) in getattr(transformers, name)._model_mapping)))
    return mapping[type(config)]


def _head_config(config: Any, head: str | None, num_labels: int | None, obj: str) -> Any:
    """Sets ``num_labels`` on ``config`` (classification heads only)."""
    if num_labels is None:
        return config
    if head != "sequence-classification":
        raise UsageError(Diagnostic("num_labels needs the sequence-classification head", obj=obj,
                                    hint="pass --head sequence-classification with --num-labels"))
    if isinstance(num_labels, bool) or not isinstance(num_labels, int):
        raise UsageError(Diagnostic(f"num_labels must be a whole number, not {num_labels!r}", obj=obj))
    if not 1 <= num_labels <= MAX_NUM_LABELS:
        raise UsageError(Diagnostic(f"num_labels must be from 1 to {MAX_NUM_LABELS:,} (MAX_NUM_LABELS), "
                                    f"not {num_labels}", obj=obj))
    config.num_labels = int(num_labels)
    return config


def load_model(ref: str, device: str = "meta", dtype: Any = None, *, head: str | None = None,
               num_labels: int | None = None, allow_factory: bool = True,
               source: str | None = None, what: str = "the model reference") -> tuple[nn.Module, str]:
    """Builds a model from a preset name, a Hugging Face directory or a factory.

    Every call returns a fresh module (callers may patch it).

    Args:
        ref: A preset name (see :func:`list_presets`), a local model directory
            holding ``config.json``, ``package.module:factory``, or a hub id
            (``org/name[@revision]``; tried last, so an existing local
            folder of that name wins).
        device: ``"meta"`` (no storage; the default) or a real device such as
            ``"cpu"`` (random weights; sensible for ``tiny-*`` presets only).
        dtype: A ``torch.dtype`` or its name; None means the preset's published
            dtype (a directory: its config's dtype; a factory: as it builds).
        head: A key of :data:`HEADS`: build the model with that task head
            instead of the class a preset or ``architectures`` names (a
            directory of a bare ``BertModel`` then builds
            ``BertForSequenceClassification``). Not for factories.
        num_labels: The classification head's number of labels (with
            ``head="sequence-classification"``; transformers' default is 2).
        allow_factory: Whether a ``package.module:factory`` may be imported
            and called. True by default, for a caller that names ``ref``
            itself; a caller passing a reference *read from a file* (a
            spec, a lock, an adapter config, a bundle) passes False unless
            the user opted in (``--allow-factory``).
        source: The file ``ref`` was read from, and ``what`` in it held
            it: both named when a factory is refused.

    Returns:
        ``(module, name)``: the model and its name (the preset name, the
        directory as given, the factory reference, or the hub id).

    Raises:
        FactoryRefusedError: ``ref`` is a factory and ``allow_factory`` is False.
        UsageError: An unknown name, a directory without a usable
            ``config.json``, a factory that cannot be imported, fails, or
            does not return an ``nn.Module``, or a hub id that cannot be
            fetched (see :func:`adaptlang.plan.hub.local_model_dir`).
    """
    ref, device = str(ref).strip(), str(device)
    wanted = _parse_dtype(dtype, ref) if dtype is not None else None
    if head is None and num_labels is not None:
        head = "sequence-classification"
    if ref in PRESETS:
        return _build_preset(PRESETS[ref], device, wanted, head, num_labels), ref
    path = Path(ref).expanduser()
    if os.path.exists(path):  # not Path.exists: it raises on a name too long (a 5,000-character model)
        return _load_directory(path, device, wanted, head, num_labels), ref
    if _FACTORY_REF.match(ref):
        if not allow_factory:
            refuse_factory(ref, source or "a file", what)
        if head is not None:
            raise UsageError(Diagnostic(f"--head does not apply to a model factory ('{ref}')", obj=ref,
                                        hint="a factory builds its own head; return the model with it"))
        return _load_factory(ref, device, wanted), ref
    from adaptlang.plan.hub import local_model_dir

    snapshot = local_model_dir(ref)  # a hub id: its config.json, fetched or from the cache
    if snapshot is not None:
        return _load_directory(snapshot, device, wanted, head, num_labels, name=ref), ref
    if "/" in ref or "\\" in ref or ref.startswith("."):
        raise UsageError(Diagnostic(f"no such model directory: {ref}", obj=ref,
                                    hint="give a local directory holding config.json, a hub id "
                                         "(org/name) or a preset name"))
    raise UsageError(Diagnostic(
        f"unknown model '{ref}'", obj=ref,
        hint=did_you_mean(ref, PRESETS) or "use a preset name, a model directory or pkg.module:factory",
        notes=("presets: " + ", ".join(PRESETS),)))


def _parse_dtype(dtype: Any, ref: str) -> torch.dtype:
    """Returns ``dtype`` as a ``torch.dtype`` (accepts ``"bfloat16"``, ``"torch.float16"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise UsageError(Diagnostic(f"unknown dtype '{dtype}'", obj=ref,
                                    hint="for example float32, float16 or bfloat16"))
    return found


@contextlib.contextmanager
def _building(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Constructs modules directly on ``device`` and, when given, in ``dtype``.

    On ``meta`` no storage is allocated and weight initialisation has nothing
    to fill, which is what makes a 70B model cheap to build. The default
    dtype is set the way ``from_pretrained(dtype=...)`` does it, and restored.
    """
    previous = torch.get_default_dtype()
    try:
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)
        with torch.device(device), (_skip_init() if str(device) == "meta" else contextlib.nullcontext()):
            yield
    finally:
        torch.set_default_dtype(previous)


#: ``torch.nn.init`` functions that modules call from ``reset_parameters``.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                   "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Makes ``torch.nn.init`` fills no-ops while building on meta (there is nothing to fill).

    Initialising is the largest avoidable cost of building a meta model: every
    Linear draws a kaiming init, which on meta still dispatches through Python
    decompositions. ``transformers`` skips its own init on meta; this covers
    torch's. Weight tying is untouched.
    """
    originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}

    def skip(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for name in originals:
            setattr(nn.init, name, skip)
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn.init, name, fn)


def _build_preset(preset: Preset, device: str, dtype: torch.dtype | None, head: str | None = None,
                  num_labels: int | None = None) -> nn.Module:
    """Builds a preset's ``transformers`` model on ``device`` (with ``head`` when given)."""
    import transformers

    dtype = dtype or getattr(torch, preset.dtype)
    config = transformers.CONFIG_MAPPING[preset.model_type](**preset.config)
    config.dtype = dtype
    config = _head_config(config, head, num_labels, preset.model_type)
    model_cls = getattr(transformers, preset.cls) if head is None else head_class(head, config, preset.model_type)
    with _building(device, dtype):
        model = model_cls(config)
    return model if device == "meta" else model.eval()


def _load_directory(path: Path, device: str, dtype: torch.dtype | None, head: str | None = None,
                    num_labels: int | None = None, name: str | None = None) -> nn.Module:
    """Builds the model a local Hugging Face directory describes (config only; ``head`` overrides its class).

    ``name`` is what errors about ``config.json`` name (a hub id rather than its cache folder).
    """
    config_file = path / "config.json"
    shown = f"config.json of '{name}'" if name else str(config_file)
    where = name or str(path)
    if not path.is_dir() or not config_file.is_file():
        raise UsageError(Diagnostic(
            f"'{path}' is not a Hugging Face model directory (no config.json)", obj=str(path),
            hint="point --model at a folder holding config.json, or use a preset name"))
    raw = read_config(config_file, shown)
    if "model_type" not in raw:
        raise UsageError(Diagnostic(f"{shown} has no 'model_type'", obj=shown,
                                    hint="a transformers config.json names its model_type"))
    if raw.get("auto_map"):
        raise UsageError(Diagnostic(
            f"{shown} needs custom code (auto_map), which adaptlang does not run",
            obj=shown, hint="wrap the model in a pkg.module:factory instead"))
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad config
        raise UsageError(Diagnostic(f"cannot build a config from {shown}: {exc}",
                                    obj=shown)) from None
    dtype = dtype or _config_dtype(config)
    config = _head_config(config, head, num_labels, where)
    model_cls = _directory_class(raw, config) if head is None else head_class(head, config, where)
    try:
        with _building(device, dtype):
            model = model_cls(config) if isinstance(model_cls, type) and issubclass(model_cls, nn.Module) \
                else model_cls.from_config(config)
    except Exception as exc:
        raise UsageError(Diagnostic(f"cannot build the model in {where}: {exc}", obj=where)) from None
    return model if device == "meta" else model.eval()


def _config_dtype(config: Any) -> torch.dtype | None:
    """Returns the dtype a config was saved with (``dtype`` or the older ``torch_dtype``).

    Read from the instance's own fields: transformers 5 keeps ``dtype`` there
    (a saved ``torch_dtype`` is renamed on load) and warns on every read of
    the ``torch_dtype`` alias, so the alias is read only when a config has
    no ``dtype`` field at all (transformers before 4.56).
    """
    fields = vars(config)
    value = fields["dtype"] if "dtype" in fields else fields.get("torch_dtype")
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value), None) if value else None
    return found if isinstance(found, torch.dtype) else None


#: Encoder-only model types: without ``architectures`` they load as the bare
#: encoder (``AutoModel``), not as a causal-LM head that merely exists for them.
_ENCODER_ONLY = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra",
                           "deberta", "deberta-v2", "camembert", "mpnet"})


def _directory_class(raw: dict[str, Any], config: Any) -> Any:
    """Returns the class named in ``architectures``, else an Auto class by ``model_type``.

    Without ``architectures``: encoder-decoders load for seq2seq LM, encoders
    as the bare model, anything else as a causal LM where transformers has one.
    """
    import transformers

    for name in raw.get("architectures") or ():
        found = getattr(transformers, str(name), None)
        if isinstance(found, type) and issubclass(found, nn.Module):
            return found
    if getattr(config, "is_encoder_decoder", False):
        order = ("AutoModelForSeq2SeqLM", "AutoModel")
    elif raw["model_type"] in _ENCODER_ONLY:
        order = ("AutoModel",)
    else:
        order = ("AutoModelForCausalLM", "AutoModel")
    for auto in order:
        if type(config) in getattr(transformers, auto)._model_mapping:
            return getattr(transformers, auto)
    raise UsageError(Diagnostic(f"transformers has no model class for model_type "
                                f"'{raw['model_type']}'", obj=str(raw.get("architectures"))))


def _load_factory(ref: str, device: str, dtype: torch.dtype | None) -> nn.Module:
    """Imports ``package.module:factory``, calls it and checks it returned a module."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # ImportError, or anything the module raises on import
        raise UsageError(Diagnostic(f"cannot import '{module_name}' for model '{ref}': {exc}",
                                    obj=ref, hint="is the package installed, or on PYTHONPATH?")) from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(Diagnostic(f"'{module_name}' has no attribute '{attr}'", obj=ref,
                                        hint=did_you_mean(part, dir(module))))
    if not callable(factory):
        raise UsageError(Diagnostic(f"'{ref}' is not callable", obj=ref,
                                    hint="name a function or class that returns an nn.Module"))
    try:
        with _building(device, dtype):
            model = factory()
    except (Exception, SystemExit) as exc:  # sys.exit from a factory must not end adaptc with its status
        # On meta, loading weights (from_pretrained, torch.load, a tensor copy) is what usually fails.
        hint = ("compile builds the model on the meta device (no weights); a factory used with adaptc "
                "compile should build from a config, not load weights") if str(device) == "meta" else None
        raise UsageError(Diagnostic(f"model factory '{ref}' failed: {type(exc).__name__}: {exc}",
                                    obj=ref, hint=hint)) from None
    if not isinstance(model, nn.Module):
        raise UsageError(Diagnostic(f"model factory '{ref}' returned {type(model).__name__}, "
                                    "not a torch.nn.Module", obj=ref))
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model
