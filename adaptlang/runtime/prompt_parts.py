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
from torch import nn

from adaptlang.errors import Diagnostic, RuntimeApplyError

__all__ = ["PromptPart", "init_prompt", "pick_init_ids"]


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

    @property
    def tokens(self) -> int:
        """Number of virtual tokens."""
        return self.weight.shape[0]

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """Returns the trainable parameters by local name (``weight``: (N, D))."""
        return {"weight": self.weight}

    def expand(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Returns the prompt for a batch: (B, N, D) in ``dtype``."""
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def pick_init_ids(token_ids: list[int], tokens: int) -> list[int]:
    """Repeats or truncates token ids to exactly ``tokens`` (PEFT's TEXT init rule)."""
    if not token_ids:
        raise ValueError("the init text tokenises to no tokens")
    reps = math.ceil(tokens / len(token_ids))
    return (list(token_ids) * reps)[:tokens]


def init_prompt(part: PromptPart, site: dict[str, Any], embed: nn.Module, gen: torch.Generator,
                tokenizer: Any, delta: str) -> None:
    """Fills a prompt's vectors as the plan says (``text``, ``vocab`` or ``random``).

    Args:
        part: The prompt to fill.
        site: The plan site (``tokens``, ``init``, ``text``).
        embed: The original input embedding module (no wrappers).
        gen: Seeded generator for ``vocab`` and ``random``.
        tokenizer: Needed for ``text``; called as ``tokenizer(text)["input_ids"]``.
        delta: The delta's name, for errors.

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
                    raise RuntimeApplyError(Diagnostic(
                        f"prompt '{delta}' is initialised from text and needs a tokenizer",
                        obj=delta, hint="pass it: adaptlang.apply(model, spec, tokenizer=tok)"))
                ids = pick_init_ids(list(tokenizer(site["text"])["input_ids"]), n)
                ids_t = torch.tensor(ids, dtype=torch.long)
            else:  # vocab: random rows of the vocabulary
                vocab = embed.weight.shape[0]
                ids_t = torch.randint(0, vocab, (n,), generator=gen)
            device = embed.weight.device
            values = embed(ids_t.to(device)).detach().to(torch.float32)  # (N, D)
        part.weight.copy_(values.to(part.weight.device))
