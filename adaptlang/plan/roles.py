"""Roles: portable names for the parts of a transformer (``@q``, ``@mlp``, ...).

A role names the modules that play one part in every block of a model
family, so that one spec fits Llama and GPT-2 alike: ``@layers[-2:].@mlp`` is
``model.layers.{30,31}.mlp`` on Llama-2-7B and ``transformer.h.{10,11}.mlp`` on
GPT-2. Roles are defined by patterns over module paths (never by layer
counts), so a 2-layer test model has the same roles as the 80-layer one.

Per family (``N`` is any layer index):

* Llama, Mistral, Qwen2: ``@layers`` ``model.layers``; ``@attn``
  ``layers.N.self_attn``; ``@q @k @v @o`` its ``q_proj k_proj v_proj o_proj``;
  ``@mlp`` ``layers.N.mlp``; ``@gate @up @down`` its ``gate_proj up_proj
  down_proj``; ``@embed`` ``embed_tokens``; ``@head`` ``lm_head``.
* GPT-2: ``@layers`` ``transformer.h``; ``@attn`` ``h.N.attn`` with the fused
  ``@qkv`` ``c_attn`` and ``@o`` ``c_proj``; ``@mlp`` ``h.N.mlp`` with ``@up``
  ``c_fc`` and ``@down`` ``c_proj``; ``@embed`` ``wte``; ``@head`` ``lm_head``.
* BERT: ``@layers`` ``encoder.layer``; ``@attn`` ``layer.N.attention``; ``@q @k
  @v`` ``attention.self.{query,key,value}``; ``@o`` ``attention.output.dense``;
  ``@mlp`` ``layer.N.output``; ``@up`` ``intermediate.dense``; ``@down``
  ``output.dense``; ``@embed`` ``word_embeddings``; ``@head`` the MLM decoder
  or ``classifier`` when the model has one.
* T5: ``@layers`` ``encoder.block`` and ``decoder.block``; ``@attn`` every
  ``SelfAttention`` and ``EncDecAttention`` with ``@q @k @v @o`` their ``q k v
  o``; ``@mlp`` ``DenseReluDense`` with ``@up`` ``wi`` (``wi_1``), ``@gate``
  ``wi_0`` (gated T5 only), ``@down`` ``wo``; ``@embed`` ``shared``; ``@head``
  ``lm_head``.
* Every family: ``@norm`` is every norm module (leaf modules whose class
  name contains ``Norm``).

BERT has no single MLP module: ``@mlp`` is each layer's ``output`` block (the
down projection, then residual and LayerNorm), where adapter-style methods
place their FFN adapter; ``@up`` and ``@down`` name the two projections.

Mixtral (transformers 5) keeps its experts as fused 3-D parameters in one
``MixtralExperts`` module, so it has no ``@up``/``@gate``/``@down`` modules;
``@mlp`` is the sparse MoE block, and two extra roles name ``@experts`` (the
fused experts) and ``@router`` (``mlp.gate``). Models whose experts are
separate modules (``experts.N.w1`` / ``gate_proj``) get ``@gate``/``@up``/``@down``.

A ``generic`` model gets the Llama-style roles that its paths happen to
match, plus inferred ones: ``@embed`` (the first Embedding), ``@layers`` (the
longest list of modules), ``@head`` (a module named ``lm_head``) and ``@norm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # signature imports this module; only types come back
    from adaptlang.plan.signature import ModuleInfo

__all__ = ["ROLE_NAMES", "RoleRule", "find_roles", "role_rules"]

#: Every role, in display order (roles a model has keep this order).
ROLE_NAMES = ("layers", "attn", "q", "k", "v", "qkv", "o", "mlp", "up", "gate", "down",
              "experts", "router", "embed", "head", "norm")


@dataclass(frozen=True)
class RoleRule:
    """One way a module gets a role.

    Attributes:
        role: The role name (without ``@``).
        names: The module's last path segment must be one of these (a fast
            pre-filter; the whole path is then checked against ``pattern``).
        pattern: A regex searched in the module's full path.
        first_only: Only the first matching module (model order) gets the role.
        lists_only: Only list-like modules (``ModuleList``) qualify.
    """

    role: str
    names: tuple[str, ...]
    pattern: re.Pattern[str]
    first_only: bool = False
    lists_only: bool = False


def _rule(role: str, names: str, pattern: str, *, first_only: bool = False,
          lists_only: bool = False) -> RoleRule:
    return RoleRule(role, tuple(names.split()), re.compile(pattern), first_only, lists_only)


_LLAMA_LIKE = (
    _rule("layers", "layers", r"(^|\.)layers$", lists_only=True),
    _rule("attn", "self_attn", r"(^|\.)layers\.\d+\.self_attn$"),
    _rule("q", "q_proj", r"\.self_attn\.q_proj$"),
    _rule("k", "k_proj", r"\.self_attn\.k_proj$"),
    _rule("v", "v_proj", r"\.self_attn\.v_proj$"),
    _rule("o", "o_proj", r"\.self_attn\.o_proj$"),
    _rule("mlp", "mlp block_sparse_moe", r"(^|\.)layers\.\d+\.(mlp|block_sparse_moe)$"),
    _rule("up", "up_proj", r"\.mlp\.up_proj$"),
    _rule("gate", "gate_proj", r"\.mlp\.gate_proj$"),
    _rule("down", "down_proj", r"\.mlp\.down_proj$"),
    # Mixture of experts: per-expert modules where a model has them (older
    # Mixtral: w1 gate, w3 up, w2 down), else the fused experts and the router.
    _rule("up", "up_proj w3", r"\.experts\.\d+\.(up_proj|w3)$"),
    _rule("gate", "gate_proj w1", r"\.experts\.\d+\.(gate_proj|w1)$"),
    _rule("down", "down_proj w2", r"\.experts\.\d+\.(down_proj|w2)$"),
    _rule("experts", "experts", r"\.(mlp|block_sparse_moe)\.experts$"),
    _rule("router", "gate", r"\.(mlp|block_sparse_moe)\.gate$"),
    _rule("embed", "embed_tokens", r"(^|\.)embed_tokens$", first_only=True),
    _rule("head", "lm_head", r"^lm_head$"),
)

_GPT2 = (
    _rule("layers", "h", r"(^|\.)h$", lists_only=True),
    _rule("attn", "attn", r"(^|\.)h\.\d+\.attn$"),
    _rule("qkv", "c_attn", r"(^|\.)h\.\d+\.attn\.c_attn$"),
    _rule("o", "c_proj", r"(^|\.)h\.\d+\.attn\.c_proj$"),
    _rule("mlp", "mlp", r"(^|\.)h\.\d+\.mlp$"),
    _rule("up", "c_fc", r"(^|\.)h\.\d+\.mlp\.c_fc$"),
    _rule("down", "c_proj", r"(^|\.)h\.\d+\.mlp\.c_proj$"),
    _rule("embed", "wte", r"(^|\.)wte$", first_only=True),
    _rule("head", "lm_head", r"^lm_head$"),
)

_BERT = (
    _rule("layers", "layer", r"(^|\.)encoder\.layer$", lists_only=True),
    _rule("attn", "attention", r"(^|\.)layer\.\d+\.attention$"),
    _rule("q", "query", r"\.attention\.self\.query$"),
    _rule("k", "key", r"\.attention\.self\.key$"),
    _rule("v", "value", r"\.attention\.self\.value$"),
    _rule("o", "dense", r"\.attention\.output\.dense$"),
    _rule("mlp", "output", r"(^|\.)layer\.\d+\.output$"),
    _rule("up", "dense", r"(^|\.)layer\.\d+\.intermediate\.dense$"),
    _rule("down", "dense", r"(^|\.)layer\.\d+\.output\.dense$"),
    _rule("embed", "word_embeddings", r"(^|\.)embeddings\.word_embeddings$", first_only=True),
    _rule("head", "decoder classifier", r"^cls\.predictions\.decoder$|^classifier$"),
)

_T5 = (
    _rule("layers", "block", r"(^|\.)(encoder|decoder)\.block$", lists_only=True),
    _rule("attn", "SelfAttention EncDecAttention",
          r"\.block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)$"),
    _rule("q", "q", r"\.(SelfAttention|EncDecAttention)\.q$"),
    _rule("k", "k", r"\.(SelfAttention|EncDecAttention)\.k$"),
    _rule("v", "v", r"\.(SelfAttention|EncDecAttention)\.v$"),
    _rule("o", "o", r"\.(SelfAttention|EncDecAttention)\.o$"),
    _rule("mlp", "DenseReluDense", r"\.block\.\d+\.layer\.\d+\.DenseReluDense$"),
    _rule("up", "wi wi_1", r"\.DenseReluDense\.(wi|wi_1)$"),
    _rule("gate", "wi_0", r"\.DenseReluDense\.wi_0$"),
    _rule("down", "wo", r"\.DenseReluDense\.wo$"),
    _rule("embed", "shared embed_tokens", r"^shared$|(^|\.)encoder\.embed_tokens$", first_only=True),
    _rule("head", "lm_head", r"^lm_head$"),
)

_TABLES: dict[str, tuple[RoleRule, ...]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "mixtral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE,
    "gpt2": _GPT2, "bert": _BERT, "t5": _T5, "generic": _LLAMA_LIKE,
}


def role_rules(family: str) -> tuple[RoleRule, ...]:
    """Returns the role rules of a family (``generic`` for an unknown one)."""
    return _TABLES.get(family, _TABLES["generic"])


def find_roles(family: str, modules: Mapping[str, "ModuleInfo"]) -> dict[str, tuple[str, ...]]:
    """Returns each role the model has and its module paths, in model order.

    Args:
        family: The model family (``llama``, ``gpt2``, ..., ``generic``).
        modules: The signature's modules, in model order.

    Returns:
        Role name to paths, roles in :data:`ROLE_NAMES` order, roles with no
        module left out.
    """
    by_name: dict[str, list[RoleRule]] = {}
    for rule in role_rules(family):
        for name in rule.names:
            by_name.setdefault(name, []).append(rule)
    found: dict[str, list[str]] = {}
    for path, info in modules.items():
        last = path.rpartition(".")[2]
        for rule in by_name.get(last, ()):
            if rule.lists_only and not info.is_list:
                continue
            if rule.first_only and found.get(rule.role):
                continue
            if rule.pattern.search(path):
                found.setdefault(rule.role, []).append(path)
        if not info.children and any("Norm" in b for b in info.bases[:-2]):
            found.setdefault("norm", []).append(path)
    if family not in _TABLES or family == "generic":
        _infer_generic(modules, found)
    return {role: tuple(found[role]) for role in ROLE_NAMES if found.get(role)}


def _infer_generic(modules: Mapping[str, "ModuleInfo"], found: dict[str, list[str]]) -> None:
    """Fills ``@embed``, ``@layers`` and ``@head`` from structure where patterns found none."""
    if "embed" not in found:
        first = next((p for p, info in modules.items() if p and "Embedding" in info.bases), None)
        if first is not None:
            found["embed"] = [first]
    if "layers" not in found:
        lists = [(len(info.children), p) for p, info in modules.items() if info.is_list]
        if lists:
            longest = max(n for n, _ in lists)
            found["layers"] = [next(p for n, p in lists if n == longest)]
    if "head" not in found:
        head = next((p for p in modules if p.rpartition(".")[2] == "lm_head"), None)
        if head is not None:
            found["head"] = [head]
