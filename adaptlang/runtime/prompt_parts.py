"""Prompt vectors: one prompt delta's trainable virtual tokens, and their initial values.

``init`` as the plan says: ``random`` (N(0, 1), nn.Embedding's default, as
PEFT's RANDOM init), ``vocab`` (random rows of the vocabulary, seeded) or
``text`` (the embeddings of a phrase, repeated or cut to the token count:
PEFT's TEXT init rule).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError

__all__ = [
    "PromptPart", "check_plain_embedding", "embedding_rows", "init_prompt", "missing_tokenizer", "pick_init_ids",
]


class PromptPart(nn.Module):
    """One prompt delta's virtual token vectors.

    Args:
        tokens: Number of virtual tokens N.
        dim: Embedding width D.
        device: Where the vectors live (the embedding's device).
    """

    def __init__(self, tokens: int, dim: int, device: torch.device | str = "cpu"):
        super().__init__()
        # Kept in fp32 as PEFT does; cast to the embeddings' dtype per call.
        self.weight = nn.Parameter(torch.zeros(tokens, dim, device=device, dtype=torch.float32))  # (N, D)
        # The sizes, kept apart from the weight: DeepSpeed ZeRO-3 empties a partitioned weight between calls.
        self.tokens = int(tokens)  # N, the number of virtual tokens
        self.dim = int(dim)  # D

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the trainable parameters by local name (``weight``: (N, D))."""
        return {"weight": self.weight}

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Returns the prompt for a batch: (B, N, D) in ``dtype``.

        Called as a module (``part(batch, dtype)``), never through the weight
        alone: an engine that gathers a module's parameters around its call
        (DeepSpeed ZeRO-3) then gathers the prompt too.
        """
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def pick_init_ids(token_ids: list[int], tokens: int) -> list[int]:
    """Repeats or truncates token ids to exactly ``tokens`` (PEFT's TEXT init rule)."""
    if not token_ids:
        raise ValueError("the init text tokenises to no tokens")
    reps = math.ceil(tokens / len(token_ids))
    return (list(token_ids) * reps)[:tokens]


def init_prompt(part: PromptPart, site: dict[str, Any], embed: nn.Module, gen: torch.Generator,
                tokenizer: Any, delta: str, weight: torch.Tensor | None = None) -> None:
    """Fills a prompt's vectors as the plan says (``text``, ``vocab`` or ``random``).

    Args:
        part: The prompt to fill.
        site: The plan site (``tokens``, ``init``, ``text``).
        embed: The original input embedding module (no wrappers).
        gen: Seeded generator for ``vocab`` and ``random``.
        tokenizer: Needed for ``text``; called as ``tokenizer(text)["input_ids"]``.
        delta: The delta's name, for errors.
        weight: The embedding's full values (vocab, D) to take rows from instead of
            calling ``embed`` (``init_deltas``: the model's own weight is sharded);
            ``embed`` must then be a plain ``nn.Embedding`` (:func:`check_plain_embedding`).

    Raises:
        RuntimeApplyError: ``text`` init without a tokenizer.
    """
    n = part.tokens
    kind = site.get("init", "random")
    with torch.no_grad():
        if kind == "random":
            # nn.Embedding's default (what PEFT's RANDOM init gives): N(0, 1).
            values = torch.randn(part.weight.shape, generator=gen, dtype=torch.float32)  # (N, D)
        else:
            if kind == "text":
                if tokenizer is None:
                    raise RuntimeApplyError(missing_tokenizer(delta))
                ids = pick_init_ids(list(tokenizer(site["text"])["input_ids"]), n)
                ids_t = torch.tensor(ids, dtype=torch.long)
            else:  # vocab: random rows of the vocabulary
                vocab = (embed.weight if weight is None else weight).shape[0]
                ids_t = torch.randint(0, vocab, (n,), generator=gen)
            if weight is None:
                values = embed(ids_t.to(embed.weight.device)).detach().to(torch.float32)  # (N, D)
            else:
                values = embedding_rows(embed, weight, ids_t, delta).to(torch.float32)  # (N, D)
        part.weight.copy_(values.to(part.weight.device))


def missing_tokenizer(delta: str, call: str = "adaptlang.apply(model, spec, tokenizer=tok)") -> Diagnostic:
    """The error for a prompt initialised from text without a tokenizer; ``call`` shows how to pass one."""
    return Diagnostic(f"prompt '{delta}' is initialised from text and needs a tokenizer", obj=delta,
                      hint=f"pass it: {call}")


def check_plain_embedding(embed: nn.Module, delta: str) -> None:
    """Refuses to take prompt rows off the model from an embedding that is not a plain ``nn.Embedding``.

    Why: a subclass may scale or otherwise change its rows (Gemma's scaled
    embedding), which :func:`embedding_rows` cannot repeat. FSDP2 subclasses
    a module in place, so the check is on the forward, not the class.

    Raises:
        RuntimeApplyError: Naming the class and what to do.
    """
    if not (isinstance(embed, nn.Embedding) and type(embed).forward is nn.Embedding.forward):
        raise RuntimeApplyError(Diagnostic(
            f"prompt '{delta}' starts from rows of a {type(embed).__name__}, whose forward is not "
            "nn.Embedding's: its rows cannot be computed off the model", obj=delta,
            hint="use 'init random', or apply the spec to the model with its weights loaded"))


def embedding_rows(embed: nn.Module, weight: torch.Tensor, ids: torch.Tensor, delta: str) -> torch.Tensor:
    """Returns what ``embed(ids)`` gives with ``weight`` as its values: (n, D), detached.

    Raises:
        RuntimeApplyError: ``embed`` is not a plain ``nn.Embedding`` (:func:`check_plain_embedding`).
    """
    check_plain_embedding(embed, delta)
    return F.embedding(ids, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse).detach()
