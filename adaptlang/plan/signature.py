"""A model's structure as plain values: the :class:`ModelSignature`.

The planner never touches tensors. :func:`signature_of` reads a model (usually
built on the meta device) once: every module's path, class, direct parameters
(name, shape, dtype), children and input/output widths, the family and its
roles, a JSON-able config subset, the unique parameter count, tied parameters
and a structural fingerprint. Everything later (selectors, accounting, plan
binding) works on this value.

Reading is linear in the number of modules with small constants: classes' MROs
are read once per class, shapes once per parameter, and widths are composed
bottom-up in one pass.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptlang.errors import Diagnostic, UsageError, did_you_mean
from adaptlang.plan.roles import find_roles

if TYPE_CHECKING:  # torch is imported where a model is read, not to use a cached signature
    from torch import nn

__all__ = [
    "ModelSignature", "ModuleInfo", "ParamInfo", "detect_family", "load_preset_signature", "signature_of",
]


@dataclass(frozen=True)
class ParamInfo:
    """One direct parameter of a module.

    Attributes:
        name: Local name (``"weight"``).
        shape: The parameter's shape.
        dtype: Its dtype's name (``"float32"``, ``"bfloat16"``, ...).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModuleInfo:
    """One module of a model.

    Attributes:
        path: Dotted path, ``""`` for the root.
        cls: ``type(module).__name__``.
        bases: ``__name__`` of every class in the MRO (what ``is`` filters on).
        params: Direct parameters (``recurse=False``), registration order.
        children: Direct child names, registration order.
        in_features: Input width (see :func:`signature_of`), or None.
        out_features: Output width, or None.
        is_list: Children are named ``0..n-1`` (``ModuleList``, ``Sequential``).
    """

    path: str
    cls: str
    bases: tuple[str, ...]
    params: tuple[ParamInfo, ...]
    children: tuple[str, ...]
    in_features: int | None
    out_features: int | None
    is_list: bool


@dataclass(frozen=True)
class ModelSignature:
    """Everything the planner knows about a model.

    Attributes:
        name: ``"llama"``, ``"gpt2"``, a directory, ``"pkg.mod:factory"``.
        family: ``llama``, ``mistral``, ``mixtral``, ``qwen2``, ``gpt2``,
            ``bert``, ``t5`` or ``generic``.
        cls: The root module's class name.
        modules: Path to module, in ``named_modules()`` order (shared modules once).
        roles: Role name to module paths, model order (see :mod:`adaptlang.plan.roles`).
        config: A JSON-able subset of ``model.config`` (empty without one).
        total_params: Unique parameters (tied ones counted once).
        tied: Parameter path to the first path of the same tensor, for the
            later paths only.
        fingerprint: sha256 over the sorted ``(path, class, parameter names and
            shapes)``: structure only, not dtype or device.
    """

    name: str
    family: str
    cls: str
    modules: dict[str, ModuleInfo]
    roles: dict[str, tuple[str, ...]]
    config: dict[str, Any]
    total_params: int
    tied: dict[str, str]
    fingerprint: str


#: ``model_type`` values with a role table; anything else is ``generic``.
FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "gpt2", "bert", "t5")
#: Class-name prefixes that identify a family when the model has no config.
_CLASS_PREFIXES = {"Llama": "llama", "Mistral": "mistral", "Mixtral": "mixtral", "Qwen2": "qwen2",
                   "GPT2": "gpt2", "Bert": "bert", "T5": "t5"}
#: Config fields worth carrying (read through ``attribute_map``, so GPT-2's
#: ``n_embd`` shows as ``hidden_size``).
_CONFIG_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_decoder_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
    "max_position_embeddings", "num_local_experts", "num_experts_per_tok", "d_ff",
    "tie_word_embeddings", "is_encoder_decoder",
)

_BASES_CACHE: dict[type, tuple[str, ...]] = {}


def signature_of(model: nn.Module, name: str | None = None) -> ModelSignature:
    """Reads a model's signature (no tensor data is touched).

    Widths: ``Linear`` is ``(in_features, out_features)``; GPT-2's ``Conv1D``
    keeps its weight as ``(in, out)``; ``Embedding`` is ``(num_embeddings,
    embedding_dim)``; a norm over ``d`` is ``(d, d)``; fused MoE experts are
    ``(hidden, hidden)`` and a router ``(hidden, experts)``; any other module
    takes ``in`` from its first descendant leaf with widths and ``out`` from its
    last (registration order).

    Args:
        model: Any ``nn.Module``, on any device (meta included).
        name: The model's name; defaults to its class name.

    Returns:
        The :class:`ModelSignature`.
    """
    named = list(model.named_modules())
    features = _compose_features(named)
    modules: dict[str, ModuleInfo] = {}
    first_path: dict[int, str] = {}
    tied: dict[str, str] = {}
    total = 0
    for path, module in named:
        params = []
        for pname, param in module._parameters.items():
            if param is None:
                continue
            params.append(ParamInfo(pname, tuple(param.shape), _dtype_name(param.dtype)))
            full = f"{path}.{pname}" if path else pname
            first = first_path.setdefault(id(param), full)
            if first != full:
                tied[full] = first
            else:
                total += param.numel()
        children = tuple(n for n, child in module._modules.items() if child is not None)
        fin, fout = features[id(module)]
        modules[path] = ModuleInfo(
            path=path, cls=type(module).__name__, bases=_bases(type(module)), params=tuple(params),
            children=children, in_features=fin, out_features=fout,
            is_list=bool(children) and all(c == str(i) for i, c in enumerate(children)))
    family = detect_family(model)
    return ModelSignature(
        name=name if name is not None else type(model).__name__,
        family=family, cls=type(model).__name__, modules=modules,
        roles=find_roles(family, modules), config=_config_subset(model),
        total_params=total, tied=tied, fingerprint=_fingerprint(modules))


@functools.lru_cache(maxsize=None)
def load_preset_signature(name: str, head: str | None = None, num_labels: int | None = None) -> ModelSignature:
    """Returns a preset's signature (built on meta), memoised per process.

    ``head`` and ``num_labels`` build it with a task head
    (:func:`adaptlang.plan.models.load_model`); each is part of the cache key.

    Presets never change, so compiling against one twice need not rebuild a
    70B meta model: this turns a ~40 ms compile into ~5 ms. Across processes
    the signature is kept on disk (:mod:`adaptlang.plan.sigcache`), so a
    fresh ``adaptc compile --model llama`` imports neither torch nor
    transformers. The value is shared: treat it as read-only.

    Raises:
        UsageError: ``name`` is not a preset name.
    """
    from adaptlang.plan.presets import PRESETS
    from adaptlang.plan.sigcache import read_cached_signature, write_cached_signature

    if name not in PRESETS:  # directories and factories can change between calls
        raise UsageError(Diagnostic(f"'{name}' is not a model preset", obj=name,
                                    hint=did_you_mean(name, PRESETS)))
    sig = read_cached_signature(name, head, num_labels)
    if sig is None:
        from adaptlang.plan.models import load_model

        module, loaded = load_model(name, device="meta", head=head, num_labels=num_labels)
        sig = signature_of(module, loaded)
        write_cached_signature(name, sig, head, num_labels)
    return sig


def detect_family(model: nn.Module) -> str:
    """Returns the model's family: its config's ``model_type`` if known, else by class name."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type:
        return model_type if model_type in FAMILIES else "generic"
    cls = type(model).__name__
    for prefix, family in _CLASS_PREFIXES.items():
        rest = cls[len(prefix):]
        # "Qwen2MoeModel" is not Qwen2: only the bare model or a head may follow the prefix.
        if cls.startswith(prefix) and rest.startswith(("Model", "For", "LMHead", "Encoder")):
            return family
    return "generic"


def _bases(cls: type) -> tuple[str, ...]:
    """Returns the names of a class's MRO (cached per class)."""
    found = _BASES_CACHE.get(cls)
    if found is None:
        found = _BASES_CACHE[cls] = tuple(c.__name__ for c in cls.__mro__)
    return found


def _dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _own_features(module: nn.Module) -> tuple[int, int] | None:
    """Returns the widths a module's own class defines, or None."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features)
    if isinstance(module, nn.Embedding):
        return (module.num_embeddings, module.embedding_dim)
    if isinstance(module, nn.LayerNorm) and module.normalized_shape:
        d = int(module.normalized_shape[-1])
        return (d, d)
    bases = _bases(type(module))
    params = module._parameters
    weight = params.get("weight")
    if "Conv1D" in bases and weight is not None and weight.dim() == 2:
        return (int(weight.shape[0]), int(weight.shape[1]))  # GPT-2 Conv1D: weight is (in, out)
    if any("Norm" in b for b in bases[:-2]) and weight is not None and weight.dim() == 1:
        return (int(weight.shape[0]), int(weight.shape[0]))
    up = params.get("gate_up_proj", params.get("up_proj"))
    down = params.get("down_proj")
    if up is not None and down is not None and up.dim() == 3 and down.dim() == 3:
        # Fused experts (transformers 5): x @ up[e].T then down[e], so (E, 2I, H) and (E, H, I).
        return (int(up.shape[-1]), int(down.shape[-2]))
    if type(module).__name__.endswith("Router") and weight is not None and weight.dim() == 2:
        return (int(weight.shape[1]), int(weight.shape[0]))  # F.linear(x, weight): (E, H)
    return None


def _compose_features(named: list[tuple[str, nn.Module]]) -> dict[int, tuple[int | None, int | None]]:
    """Widths of every module, by object id, composed bottom-up.

    Memoised by object so a module shared by two parents is read once. The
    walk is an explicit post-order stack, not recursion, so a model nested
    thousands of modules deep (a factory's ``Sequential`` chain) cannot hit
    Python's recursion limit here.
    """
    features: dict[int, tuple[int | None, int | None]] = {}
    open_: set[int] = set()  # modules whose children are being read (a cycle back to one is skipped)
    for _, top in named:
        if id(top) in features:
            continue
        stack: list[tuple[nn.Module, bool]] = [(top, False)]
        while stack:
            module, children_done = stack.pop()
            if id(module) in features:
                continue
            if not children_done:
                own = _own_features(module)
                if own is not None:
                    features[id(module)] = own
                    continue
                open_.add(id(module))
                stack.append((module, True))
                stack.extend((c, False) for c in module._modules.values()
                             if c is not None and id(c) not in features and id(c) not in open_)
                continue
            open_.discard(id(module))
            kids = [features[id(c)] for c in module._modules.values() if c is not None and id(c) in features]
            fin = next((k[0] for k in kids if k[0] is not None), None)
            fout = next((k[1] for k in reversed(kids) if k[1] is not None), None)
            features[id(module)] = (fin, fout)
    return features


def _config_subset(model: nn.Module) -> dict[str, Any]:
    """Returns the JSON-able fields of ``model.config`` worth showing (sorted keys)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    found: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        try:
            value = getattr(config, key, None)
        except Exception:  # some configs compute fields lazily and may raise
            continue
        if isinstance(value, (bool, int, float, str)):
            found[key] = value
    return dict(sorted(found.items()))


def _fingerprint(modules: dict[str, ModuleInfo]) -> str:
    """sha256 over the sorted module records: path, class, parameter names and shapes.

    Dtype and device are left out on purpose: a plan compiled against a
    float16 meta preset must bind to the same architecture loaded in float32.
    """
    records = sorted(
        f"{path}\t{info.cls}\t" + ";".join(f"{p.name}:{','.join(map(str, p.shape))}" for p in info.params)
        for path, info in modules.items())
    return hashlib.sha256("\n".join(records).encode("utf-8")).hexdigest()
