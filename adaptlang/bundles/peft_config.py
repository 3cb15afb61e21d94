"""The part of a PEFT ``adapter_config.json`` adaptlang reads, checked before anything uses it.

An adapter folder comes from a model hub or a stranger; its config is read
through :func:`read_peft_config`: JSON limits first (nesting, ``NaN``,
:mod:`adaptlang.bundles.safejson`), then :class:`PeftConfig`, a pydantic
model of the fields the importer uses with their JSON types, then their
values against the language's ranges (``r`` and ``rank_pattern`` values are
ranks: positive whole numbers; ``lora_alpha`` and ``alpha_pattern`` values
positive and at most :data:`~adaptlang.limits.BUNDLE_MAX_PROPERTY_MAGNITUDE`;
``lora_dropout`` a probability), and the pattern keys as regular
expressions (PEFT matches them with ``re``). Every failure is a
:class:`~adaptlang.errors.BundleError` naming the file and the field
(``adapter_config.json: field rank_pattern.q_proj: ...``). Fields the
importer does not read are kept as they are (PEFT adds new ones often).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from adaptlang.bundles.manifest_schema import check_real, language_check
from adaptlang.bundles.safejson import first_error, parse_json
from adaptlang.errors import BundleError, Diagnostic
from adaptlang.limits import BUNDLE_MAX_PATTERN_CHARS, BUNDLE_MAX_PATTERN_QUANTIFIERS, BUNDLE_MAX_PEFT_TEXT_CHARS

__all__ = ["PeftConfig", "read_peft_config"]

#: A group repeated by ``*``, ``+`` or ``{``: the nested repetition behind catastrophic backtracking
#: (``(a+)+$`` on a long module path runs for hours). No real rank/alpha pattern has one.
_NESTED_REPEAT = re.compile(r"\)[*+{]")


class PeftConfig(BaseModel):
    """The fields of ``adapter_config.json`` the importer reads (PEFT's names and JSON types)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    peft_type: str
    r: Optional[int] = None
    lora_alpha: Optional[float] = None
    lora_dropout: Optional[float] = None
    rank_pattern: Optional[dict[str, int]] = None
    alpha_pattern: Optional[dict[str, float]] = None
    target_modules: Optional[Union[list[str], str]] = None
    feedforward_modules: Optional[Union[list[str], str]] = None
    use_dora: Optional[bool] = None
    use_rslora: Optional[bool] = None
    lora_bias: Optional[bool] = None
    task_type: Optional[str] = None
    num_transformer_submodules: Optional[int] = None
    prompt_tuning_init: Optional[str] = None
    prompt_tuning_init_text: Optional[str] = None
    base_model_name_or_path: Optional[str] = None


def _refuse(where: Path, field: str, message: str) -> BundleError:
    return BundleError(Diagnostic(f"adapter_config.json: field {field}: {message}", obj=str(where),
                                  hint="fix the adapter's config, or save the adapter again with PEFT"))


def _check_pattern(where: Path, field: str, pattern: str) -> None:
    """A rank/alpha pattern key or ``feedforward_modules`` regex: short, valid, without nested repetition."""
    if len(pattern) > BUNDLE_MAX_PATTERN_CHARS:
        raise _refuse(where, field, f"a pattern of {len(pattern):,} characters, more than the limit "
                                    f"BUNDLE_MAX_PATTERN_CHARS = {BUNDLE_MAX_PATTERN_CHARS:,}")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _refuse(where, field, f"{pattern[:80]!r} is not a regular expression: {exc}") from None
    if _NESTED_REPEAT.search(pattern):
        raise _refuse(where, field, f"{pattern[:80]!r} repeats a group, which can make matching "
                                    "run for hours; adaptlang refuses such patterns")
    quantifiers = count_quantifiers(pattern)
    if quantifiers > BUNDLE_MAX_PATTERN_QUANTIFIERS:
        # `a*a*a*...c` backtracks through every split of a long path: time grows as the path
        # length to the power of the quantifiers (12 took over 100 s on a 40-character path).
        raise _refuse(where, field, f"{pattern[:80]!r} has {quantifiers} repetitions (*, +, ?, {{m,n}}), more "
                                    f"than the limit BUNDLE_MAX_PATTERN_QUANTIFIERS = "
                                    f"{BUNDLE_MAX_PATTERN_QUANTIFIERS}: matching it could take hours")


def count_quantifiers(pattern: str) -> int:
    """Counts the repetition operators of a regular expression (outside character classes, unescaped).

    A lazy or possessive suffix (``*?``, ``++``) and ``(?`` group syntax are not counted again.
    """
    count, i, in_class = 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":  # `[]...]`: a leading ] is a member
                i += 1
        elif char in "*+?{" and not (char == "?" and i > 0 and pattern[i - 1] in "(*+?}"):
            if not (char in "*+" and i > 0 and pattern[i - 1] in "*+?}"):
                count += 1
        i += 1
    return count


def _check_values(where: Path, config: PeftConfig) -> None:
    """The values against the language's ranges (module docstring)."""
    from adaptlang.spec.values import DROPOUT, POS_INT, POS_NUMBER

    checks: list[tuple[str, Any, Any]] = [("r", POS_INT, config.r), ("lora_alpha", POS_NUMBER, config.lora_alpha),
                                          ("lora_dropout", DROPOUT, config.lora_dropout),
                                          ("num_transformer_submodules", POS_INT, config.num_transformer_submodules)]
    for key, value in (config.rank_pattern or {}).items():
        _check_pattern(where, f"rank_pattern.{key[:80]}", key)
        checks.append((f"rank_pattern.{key[:80]}", POS_INT, value))
    for key, value in (config.alpha_pattern or {}).items():
        _check_pattern(where, f"alpha_pattern.{key[:80]}", key)
        checks.append((f"alpha_pattern.{key[:80]}", POS_NUMBER, value))
    for field, prop, value in checks:
        if value is None:
            continue
        problem = check_real(value, field.rsplit(".", 1)[-1]) if prop is not POS_INT else None
        problem = problem or language_check(prop, value)
        if problem is not None:
            raise _refuse(where, field, problem)
    if isinstance(config.feedforward_modules, str):
        _check_pattern(where, "feedforward_modules", config.feedforward_modules)
    text = config.prompt_tuning_init_text
    if text is not None and len(text) > BUNDLE_MAX_PEFT_TEXT_CHARS:
        raise _refuse(where, "prompt_tuning_init_text",
                      f"{len(text):,} characters, more than the limit BUNDLE_MAX_PEFT_TEXT_CHARS = "
                      f"{BUNDLE_MAX_PEFT_TEXT_CHARS:,}")


def read_peft_config(config_file: Path) -> dict[str, Any]:
    """Reads and checks ``adapter_config.json``; returns it as a dict (unknown fields kept).

    Raises:
        BundleError: Unreadable, not JSON, nested too deep, a field of the
            wrong type or out of range, or a bad pattern; naming the file and the field.
    """
    from adaptlang.limits import MAX_CONFIG_BYTES
    from adaptlang.textfile import FileProblem, read_text_file

    try:  # a regular file within the limit: a stranger's folder may hold a FIFO or a link to /dev/zero
        text = read_text_file(config_file, MAX_CONFIG_BYTES, what="a config file (MAX_CONFIG_BYTES)")
    except FileProblem as problem:
        raise BundleError(Diagnostic(f"cannot read adapter_config.json: {problem.message}", obj=str(config_file),
                                     hint=problem.hint)) from None
    data = parse_json(text, str(config_file), "adapter_config.json")
    if not isinstance(data, dict):
        raise BundleError(Diagnostic("adapter_config.json is not a JSON object", obj=str(config_file)))
    try:
        config = PeftConfig.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc.errors())
        raise _refuse(config_file, field, message) from None
    _check_values(config_file, config)
    return data
