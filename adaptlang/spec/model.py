"""The spec IR: what a ``.adapt`` file means, independent of any model.

``spec.lower`` builds these from the AST after checking names, references,
types and ranges. Values here are resolved (constants evaluated, defaults
filled in, task expressions flattened) but selectors are not: binding a
selector to modules needs a model, which is the planner's job.

Every model is frozen with extra fields forbidden. Spans ride along for the
planner's diagnostics but are excluded from :meth:`Spec.canonical` so that
formatting a file never changes what it means.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from adaptlang.errors import Span
from adaptlang.syntax.ast import Selector

__all__ = [
    "AdapterDelta", "Delta", "IA3Delta", "LoraDelta", "Override", "PromptDelta",
    "PromptInit", "Quantize", "SparseDelta", "Spec", "Task", "TaskTerm", "TuneDelta",
    "OVERRIDABLE",
]


class IRModel(BaseModel):
    """Base of the IR: frozen, no extra fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Override(IRModel):
    """``KEY VALUE for SELECTOR``: a per-site value; the last match wins.

    Attributes:
        key: The property overridden (one of the kind's OVERRIDABLE keys).
        value: The resolved value, of the property's type.
        selector: Sites it applies to (matched against site paths).
        span: Where the override is written.
    """

    key: str
    value: Any
    selector: Selector
    span: Span | None = Field(default=None, exclude=True)


class DeltaBase(IRModel):
    """Fields every delta has."""

    name: str
    overrides: list[Override] = []
    span: Span | None = Field(default=None, exclude=True)
    source_file: str = Field(default="", exclude=True)


class LoraDelta(DeltaBase):
    """``lora``: ``y = W x + (alpha / rank) * B(A(dropout(x)))``.

    ``alpha`` None means "equal to the site's rank" (after overrides).
    """

    kind: Literal["lora"] = "lora"
    on: Selector
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    init: Literal["kaiming", "gaussian", "zeros"] = "kaiming"
    variant: Literal["lora", "dora", "rslora"] = "lora"
    bias: bool = False


class IA3Delta(DeltaBase):
    """``ia3``: a learned vector rescaling a module's output (or input).

    ``feedforward true`` scales the input instead of the output, as PEFT does
    for modules listed in ``feedforward_modules``.
    """

    kind: Literal["ia3"] = "ia3"
    on: Selector
    init: Literal["ones"] = "ones"
    feedforward: bool = False


class AdapterDelta(DeltaBase):
    """``adapter``: a bottleneck ``h + scale * up(act(down(h)))``.

    Exactly one of ``size`` and ``reduction`` is set after lowering.
    """

    kind: Literal["adapter"] = "adapter"
    placement: Literal["after", "before", "parallel"]
    on: Selector
    size: int | None = None
    reduction: float | None = None
    act: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = 0.0
    scale: float = 1.0
    residual: bool = True


class PromptInit(IRModel):
    """How soft-prompt vectors start: ``text "..."``, ``vocab`` or ``random``."""

    kind: Literal["text", "vocab", "random"] = "random"
    text: str | None = None


class PromptDelta(DeltaBase):
    """``prompt``: ``tokens`` trainable vectors prepended to input embeddings."""

    kind: Literal["prompt"] = "prompt"
    tokens: int
    init: PromptInit = PromptInit()


class TuneDelta(DeltaBase):
    """``tune``: re-train existing parameters (partial fine-tuning, BitFit)."""

    kind: Literal["tune"] = "tune"
    params: Selector


class SparseDelta(DeltaBase):
    """``sparse``: only a ``density`` fraction of a weight's entries train."""

    kind: Literal["sparse"] = "sparse"
    on: Selector
    density: float = 0.01
    select: Literal["magnitude", "random"] = "magnitude"
    seed: int = 0


Delta = Annotated[
    Union[LoraDelta, IA3Delta, AdapterDelta, PromptDelta, TuneDelta, SparseDelta],
    Field(discriminator="kind"),
]

#: Keys a ``for`` override may set, per delta kind.
OVERRIDABLE: dict[str, tuple[str, ...]] = {
    "lora": ("rank", "alpha", "dropout", "init", "variant", "bias"),
    "ia3": ("init", "feedforward"),
    "adapter": ("size", "reduction", "act", "dropout", "scale", "residual"),
    "prompt": (),
    "tune": (),
    "sparse": ("density", "select", "seed"),
    "quantize": ("block", "double", "compute"),
}


class Quantize(IRModel):
    """``quantize FORMAT { on ... }``: a transform of the frozen base."""

    format: Literal["nf4", "int8"]
    on: Selector
    block: int = 64
    double: bool = True
    compute: Literal["float32", "bfloat16"] = "float32"
    overrides: list[Override] = []
    span: Span | None = Field(default=None, exclude=True)


class TaskTerm(IRModel):
    """One delta's part in a task, after flattening the task expression.

    Attributes:
        delta: The delta's name.
        weight: Its contribution's scale (weights of repeated occurrences add).
        frozen: Used but not trained in this task.
    """

    delta: str
    weight: float = 1.0
    frozen: bool = False


class Task(IRModel):
    """A named composition of deltas, flattened in written order.

    Attributes:
        name: The task's name (``default`` for the implicit task).
        terms: Each delta once, in first-written order.
        implicit: True for the ``default`` task of a spec without tasks.
    """

    name: str
    terms: list[TaskTerm]
    implicit: bool = False
    span: Span | None = Field(default=None, exclude=True)


class Spec(IRModel):
    """A whole checked spec, with ``use`` imports merged in.

    Attributes:
        version: The language version (1).
        model: The default model (preset name, directory or ``pkg.mod:factory``).
        constants: ``let`` values, resolved.
        deltas: By name, in declaration order (imports first).
        tasks: By name, in declaration order.
        quantize: Base transforms, in order.
        path: The file it came from, or ``"<string>"``.
        sources: Source text of every file read (the root and its imports),
            by the path used in spans; for diagnostics and bundle provenance.
    """

    version: int = 1
    model: str | None = None
    constants: dict[str, float] = {}
    deltas: dict[str, Delta]
    tasks: dict[str, Task]
    quantize: list[Quantize] = []
    path: str = Field(default="<string>", exclude=True)
    sources: dict[str, str] = Field(default_factory=dict, exclude=True)

    def canonical(self) -> dict[str, Any]:
        """Returns the meaning of the spec as plain JSON-able data (no spans).

        Two specs that differ only in formatting, comments or statement order
        of deltas give equal values here (deltas and tasks are sorted).
        """
        data = self.model_dump(mode="json", exclude={"constants"})
        data["deltas"] = {k: data["deltas"][k] for k in sorted(data["deltas"])}
        data["tasks"] = {k: data["tasks"][k] for k in sorted(data["tasks"])}
        return data
