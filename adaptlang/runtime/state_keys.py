"""State-dict hooks of ``SiteModule``: the base keeps the keys it had before wrapping.

A wrapped module's tensors live under ``{prefix}base.`` in the module tree;
these hooks rename them to ``{prefix}`` in ``state_dict()`` and back in
``load_state_dict()``, so checkpoints of the original model (and HF
``save_pretrained`` output) keep working in both directions. The parts add
``{prefix}parts.{delta}.{name}``; a quantized weight is ``{prefix}quant.*``.

``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict``,
``set_model_state_dict``: the way to load a full checkpoint into an FSDP2
model) does not run these hooks to name tensors: it walks the module tree
and asks each module's ``_fqn_modifiers()`` which children its keys skip.
:func:`fqn_modifiers` gives it the same renaming; without it the base
tensors' names would not match the checkpoint's and, with ``strict=False``,
they would silently keep no value on ranks other than 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["fqn_modifiers", "put_base_keys_back", "route_base_keys"]


def put_base_keys_back(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook: ``{prefix}base.X`` -> ``{prefix}X``, keeping the order.

    Why: the original model's checkpoints (and HF ``save_pretrained``) name
    the base's tensors without the wrapper; the site's own entries are the
    last ones in the dict, so they are taken out and put back renamed.
    """
    own = []
    for key in reversed(state_dict):
        if not key.startswith(prefix):
            break
        own.append(key)
    items = [(key, state_dict.pop(key)) for key in reversed(own)]
    base_prefix = prefix + "base."
    for key, value in items:
        if key.startswith(base_prefix):
            state_dict[prefix + key[len(base_prefix):]] = value
    for key, value in items:
        if not key.startswith(base_prefix):
            state_dict[key] = value


def route_base_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any,
                     strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                     error_msgs: list[str]) -> None:
    """Load pre-hook: the inverse of :func:`put_base_keys_back` (``{prefix}X`` -> ``{prefix}base.X``).

    A dense ``{prefix}weight`` arriving at a quantized site is quantized into its storage.
    """
    own = (prefix + "base.", prefix + "parts.", prefix + "quant.")
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        rest = key[len(prefix):]
        value = state_dict.pop(key)
        quant = module._modules.get("quant")
        if rest == "weight" and quant is not None:
            quant.store(value.to(quant.device))
            # Its new storage, so that a strict load finds the quant.* keys (it copies them onto themselves).
            state_dict.update({f"{prefix}quant.{n}": t for n, t in quant.state_tensors().items()})
            continue
        state_dict[prefix + "base." + rest] = value


def fqn_modifiers(base: nn.Module) -> dict[str, str]:
    """``SiteModule._fqn_modifiers()``: each first key segment of the base -> ``"base"``, the child it lives in.

    The contract of ``torch.distributed.checkpoint.state_dict``: for a key
    segment ``name`` under this module, ``modifiers[name]`` is the child to
    step into first; every child named among the values is left out of the
    keys (as :func:`put_base_keys_back` leaves out ``base.``).
    """
    names = [*base._parameters, *base._buffers, *base._modules]
    return {name: "base" for name in names}
