"""Syntax errors by example: malformed snippets and the message each one means.

Each entry pairs a label (a function from the error's context to a message
and a hint) with snippets that fail the way a user's spec would. The parser
state at which a snippet fails identifies the mistake; within one state, a
snippet failing on the same kind of token wins over the first entry listed
(so general messages come first and token-specific ones after them).

Adding a message means adding an entry here; ``tests/syntax`` checks that
every snippet really fails to parse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptlang.errors import did_you_mean
from adaptlang.syntax.ast import DELTA_KINDS, KIND_PROPERTIES, PLACEMENT_KEYS

if TYPE_CHECKING:  # pragma: no cover
    from adaptlang.syntax.diagnose import ErrorContext

__all__ = ["BY_EXPECTED", "EXAMPLES"]

_H = "adaptlang 1\n"
_ALL_KEYS = sorted({k for keys in KIND_PROPERTIES.values() for k in keys})
_STATEMENTS_HINT = ("a statement is `KIND NAME { ... }`, `task NAME = ...`, `let NAME = ...`, "
                    '`use "file.adapt"`, `model NAME` or `quantize FORMAT { ... }`')
Result = "tuple[str, str | None]"


def _block(body: str) -> str:
    return f"{_H}lora a {{\n    {body}\n}}\n"


# ----------------------------------------------------------------- top level


def version(ctx: ErrorContext) -> Result:
    return f"expected the language version after `adaptlang`, found {ctx.found}", "write `adaptlang 1`"


def statement(ctx: ErrorContext) -> Result:
    return f"expected a statement, found {ctx.found}", _STATEMENTS_HINT


def end_of_statement(ctx: ErrorContext) -> Result:
    return (f"unexpected {ctx.found} after the end of the statement",
            "write one statement per line")


def model_name(ctx: ErrorContext) -> Result:
    return (f"expected a model name after `model`, found {ctx.found}",
            'for example `model llama` or `model "path/to/model"`')


def let_name(ctx: ErrorContext) -> Result:
    return f"expected a name after `let`, found {ctx.found}", "write `let NAME = VALUE`, e.g. `let r = 8`"


def let_equals(ctx: ErrorContext) -> Result:
    return f"expected '=' after `let {ctx.prev}`, found {ctx.found}", f"write `let {ctx.prev} = VALUE`"


def use_path(ctx: ErrorContext) -> Result:
    return f"`use` takes a quoted path, found {ctx.found}", 'write `use "other.adapt"`'


def delta_name(ctx: ErrorContext) -> Result:
    word = ctx.first_word
    if word in _ALL_KEYS and word not in DELTA_KINDS:
        col = len(ctx.line_text) - len(ctx.line_text.lstrip()) + 1
        return (f"property `{word}` outside a block",
                "properties go inside a delta's block: `lora NAME { rank 8 }`", (col, len(word)))
    return (f"expected a name after `{word}`, found {ctx.found}",
            f"a delta is declared as `KIND NAME {{ ... }}`, e.g. `{word} attn {{ ... }}`")


def block_open(ctx: ErrorContext) -> Result:
    words = ctx.before.split("#")[0].split()
    if not words:  # `lora a` ended its line: the head is on the line above
        above = [l.split("#")[0].strip() for l in ctx.text.split("\n")[: ctx.line - 1]]
        words = next((l.split() for l in reversed(above) if l), [])
    head = " ".join(words[:2])
    return f"expected '{{' after `{head}`, found {ctx.found}", f"open the block: `{head} {{`"


def quantize_format(ctx: ErrorContext) -> Result:
    return (f"expected a format after `quantize`, found {ctx.found}",
            "for example `quantize nf4 { on layers[*].** is Linear }`")


# ----------------------------------------------------------------- values


def incomplete_expression(ctx: ErrorContext) -> Result:
    return (f"expected a number, a name or '(' after '{ctx.prev}', found {ctx.found}",
            "an expression is numbers and constants joined by + - * /")


def let_value(ctx: ErrorContext) -> Result:
    return f"expected a value after '=', found {ctx.found}", "for example `let r = 8`"


def _open_count(text: str, opener: str, closer: str) -> int:
    """How many ``opener`` are still open at the end of ``text`` (strings skipped)."""
    depth, in_string = 0, False
    for ch in text:
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch == opener:
            depth += 1
        elif not in_string and ch == closer:
            depth = max(depth - 1, 0)
    return depth


def after_operand(ctx: ErrorContext) -> Result:
    """After a complete operand: an unclosed '(' if there is one, else what the statement allows."""
    if _open_count(ctx.before, "(", ")"):
        return f"expected ')' to close '(', found {ctx.found}", "add the missing ')'"
    if ctx.first_word == "task" and ctx.block is None:
        return task_join(ctx)
    return after_value(ctx)


def after_value(ctx: ErrorContext) -> Result:
    word = ctx.token
    if ctx.block is not None and word in _ALL_KEYS:
        return (f"one property per line: `{word}` starts a new property",
                f"put `{word} ...` on its own line")
    if ctx.block is not None:
        key = ctx.key
        if ctx.token_type in ("LSQB", "DOT", "LBRACE", "STAR", "STARSTAR") and key not in PLACEMENT_KEYS:
            near = did_you_mean(key, PLACEMENT_KEYS)
            return (f"`{key}` takes a value, not a selector",
                    near or "selectors follow on, after, before, parallel or params")
        return (f"unexpected {ctx.found} after the value of `{key}`",
                "write one property per line, `KEY VALUE` or `KEY VALUE for SELECTOR`")
    return end_of_statement(ctx)


# ----------------------------------------------------------------- blocks


def property_key(ctx: ErrorContext) -> Result:
    return (f"expected a property name, found {ctx.found}",
            "properties are written `KEY VALUE`, one per line")


def property_value(ctx: ErrorContext) -> Result:
    return (f"expected a value after `{ctx.key}`, found {ctx.found}",
            "values are numbers, percentages, names, strings or arithmetic")


def property_equals(ctx: ErrorContext) -> Result:
    if ctx.token_type != "EQUAL":
        # The parser state after a key is the same for any bad token: only '=' is this mistake.
        return placement_value(ctx) if ctx.key in PLACEMENT_KEYS else property_value(ctx)
    rest = ctx.line_text[ctx.col:].strip() or "VALUE"
    return ("unexpected '=' — properties are written `KEY VALUE` without '='",
            f"write `{ctx.key} {rest}`")


def property_missing_value(ctx: ErrorContext) -> Result:
    key = ctx.key
    if key in PLACEMENT_KEYS:
        return f"missing selector after `{key}`", f"for example `{key} layers[*].self_attn.q_proj`"
    return f"missing value for `{key}`", f"write `{key} VALUE`"


def placement_value(ctx: ErrorContext) -> Result:
    return (f"expected a selector after `{ctx.key}`, found {ctx.found}",
            "for example `layers[*].self_attn.{q_proj, v_proj}`")


# ----------------------------------------------------------------- selectors


def segment_after_dot(ctx: ErrorContext) -> Result:
    return (f"expected a path segment after '.', found {ctx.found}",
            "a segment is a name (`q_proj`), a glob (`*_proj`), `*`, `**`, a role or `{a, b}`")


def empty_segment(ctx: ErrorContext) -> Result:
    return "empty path segment '..' in a selector", "use `**` to skip any number of segments: `a.**.b`"


def trailing_dot(ctx: ErrorContext) -> Result:
    return "a selector cannot end with '.'", "remove the '.' or add the last segment"


def empty_alternative(ctx: ErrorContext) -> Result:
    return ("empty alternative in '{...}'",
            "separate alternatives with commas and leave none empty: `{q_proj, v_proj}`")


def unclosed_alternation(ctx: ErrorContext) -> Result:
    depth = _open_count(ctx.before, "{", "}") - (1 if ctx.block and ctx.block.line == ctx.line else 0)
    if depth <= 0:
        return after_selector(ctx)
    return (f"expected ',' or '}}' in '{{...}}', found {ctx.found}",
            "close the alternatives with '}': `{q_proj, v_proj}`")


def index_item(ctx: ErrorContext) -> Result:
    return (f"expected an index, a slice or '*' in '[...]', found {ctx.found}",
            "for example `[3]`, `[-1]`, `[0:8]`, `[::2]`, `[*]` or `[0, 5, 9]`")


def empty_index(ctx: ErrorContext) -> Result:
    return "empty index '[]'", "write `[*]` for every child, or an index such as `[0]`"


def slice_parts(ctx: ErrorContext) -> Result:
    return "a slice has at most three parts, `start:stop:step`", "for example `[0:8:2]`"


def unclosed_index(ctx: ErrorContext) -> Result:
    return f"expected ',' or ']' in '[...]', found {ctx.found}", "close the index with ']'"


def after_selector(ctx: ErrorContext) -> Result:
    if ctx.block is not None and ctx.token in _ALL_KEYS:
        return (f"one property per line: `{ctx.token}` starts a new property",
                f"put `{ctx.token} ...` on its own line")
    if ctx.token_type == "MINUS":
        return "'-' cannot appear in a path segment", "selector segments are names, globs and indices"
    return (f"unexpected {ctx.found} in a selector",
            "join segments with '.', list selectors with ',', filter with `is CLASS`")


def selector_start(ctx: ErrorContext) -> Result:
    return (f"expected a selector after '{ctx.prev}', found {ctx.found}",
            "for example `layers[*].mlp` or `@q`")


def class_name(ctx: ErrorContext) -> Result:
    return f"expected a class name after '{ctx.prev}', found {ctx.found}", "for example `is Linear | Conv1D`"


# ----------------------------------------------------------------- tasks


def task_name(ctx: ErrorContext) -> Result:
    return f"expected a name after `task`, found {ctx.found}", "write `task NAME = a + b`"


def task_equals(ctx: ErrorContext) -> Result:
    return (f"expected '=' after `task {ctx.prev}`, found {ctx.found}",
            f"write `task {ctx.prev} = a + b`")


def task_operand(ctx: ErrorContext) -> Result:
    return (f"expected a delta or task name after '{ctx.prev}', found {ctx.found}",
            "a task is deltas and tasks joined by '+', with `0.5 * a` weights and `frozen(a)`")


def task_weight_after(ctx: ErrorContext) -> Result:
    return (f"expected a delta or task name after '*', found {ctx.found}",
            "a weight goes before what it scales: `0.5 * a`")


def frozen_parens(ctx: ErrorContext) -> Result:
    return f"`frozen` takes parentheses, found {ctx.found}", "write `frozen(a)`"


def task_join(ctx: ErrorContext) -> Result:
    if ctx.token_type == "MINUS":
        return "tasks combine with '+' only", "leave a delta out of the task instead of subtracting it"
    if ctx.token_type == "STAR":
        return "a weight goes before what it scales", f"write `0.5 * {ctx.prev}`"
    return (f"expected '+' or end of line after '{ctx.prev}', found {ctx.found}",
            "combine deltas with '+': `a + b`")


# ----------------------------------------------------------------- the table

S = "start"
EXAMPLES: list[tuple] = [
    (version, ["adaptlang\n", "adaptlang x\n"], S),
    (statement, [f"{_H}= 1\n", f"{_H}8\n", f"{_H}*\n", f"{_H}(\n", "= 1\n", "\n= 1\n"], S),
    (end_of_statement, [f"{_H}model llama x\n", "adaptlang 1 2\n", f'{_H}use "a" b\n',
                        f"{_H}lora a {{\n}} x\n", f"{_H}model llama {{\n"], S),
    (model_name, [f"{_H}model\n", f"{_H}model =\n"], S),
    (let_name, [f"{_H}let\n", f"{_H}let = 8\n", f"{_H}let 8 = 8\n"], S),
    (let_equals, [f"{_H}let r 8\n", f"{_H}let r\n"], S),
    (let_value, [f"{_H}let r =\n", f"{_H}let r = )\n"], S),
    (incomplete_expression, [f"{_H}let r = 2 *\n", f"{_H}let r = 2 +\n", f"{_H}let r = 2 -\n",
                             f"{_H}let r = 2 /\n", f"{_H}let r = (\n", f"{_H}let r = -\n",
                             _block("alpha 2 *"), _block("alpha 2 +"), _block("alpha -"),
                             _block("alpha (")], S),
    (after_operand, [f"{_H}let r = (1 + 2\n", f"{_H}let r = (r\n", _block("alpha (2 * 8"),
                      f"{_H}let r = (1 + 2 3\n"], S),
    (after_operand, [f"{_H}let a = 1 b\n", f"{_H}let a = b c\n", f"{_H}let a = 1 2\n",
                   f'{_H}let a = "x" y\n', f"{_H}let a = (1) b\n",
                   _block("rank 8 alpha 16"), _block("act gelu relu"), _block("rank 8 16"),
                   _block('init text "x" y'), _block("alpha (1) b"), _block("density 1% x"),
                   _block("alpha 2 * r x"), _block("alpha -r x")], S),
    (use_path, [f"{_H}use\n", f"{_H}use other.adapt\n", f"{_H}use x\n"], S),
    (delta_name, [f"{_H}lora\n", f"{_H}lora {{\n}}\n", f"{_H}lora = 3\n", f"{_H}rank 8\n"], S),
    (block_open, [f"{_H}lora a\n", f"{_H}lora a on x\n", f"{_H}lora a = 3\n", f"{_H}lora a\non x\n",
                  f"{_H}quantize nf4\n", f"{_H}quantize nf4 on x\n", f"{_H}quantize nf4\non x\n"], S),
    (quantize_format, [f"{_H}quantize\n", f"{_H}quantize {{\n}}\n"], S),
    # Inside a block.
    (property_key, [_block("= 8"), _block("8"), _block("{"), _block('"x"'), f"{_H}lora a {{ = 8 }}\n",
                    f"{_H}lora a {{\n    on x\n    = 8\n}}\n", f"{_H}lora a\n{{ = 8 }}\n"], S),
    (property_value, [_block("rank :"), _block("rank ]")], S),
    (property_equals, [_block("rank = 8"), _block("on = x")], S),
    (property_missing_value, [_block("rank"), f"{_H}lora a {{ rank }}\n", _block("on"),
                              f"{_H}lora a {{ on }}\n"], S),
    (placement_value, [_block("on :"), _block("on ]")], S),
    # Selectors.
    (segment_after_dot, [_block("on x.]"), _block("on x.("), _block("on x.}")], S),
    (empty_segment, [_block("on x..y")], S),
    (trailing_dot, [_block("on x.")], S),
    (empty_alternative, [_block("on x.{a,}"), _block("on x.{}"), _block("on x.{a,,b}")], S),
    (unclosed_alternation, [_block("on x.{a, b"), _block("on x.{a b}"), _block("on x.{a.b c}")], S),
    (index_item, [_block("on x[a]"), _block("on x[0, a]"), _block("on x[-]")], S),
    (empty_index, [_block("on x[]")], S),
    (unclosed_index, [_block("on x[0"), _block("on x[0 1]"), _block("on x[*"), _block("on x[0:"),
                      _block("on x[0:1"), _block("on x[:"), _block("on x[::"), _block("on x[::1")], S),
    (slice_parts, [_block("on x[1:2:3:4]"), _block("on x[::2:]"), _block("on x[1:2::]"),
                   _block("on x[:::]")], S),
    (after_selector, [_block("on x y"), _block("on x[0] y"), _block("on x.{a} y"), _block("on @q y"),
                      _block("on * y"), _block("on ** y"), _block("on x -"), _block("on x is Linear y"),
                      _block("rank 8 for x y")], S),
    (selector_start, [_block("on x,"), _block("on x except"), _block("rank 8 for"),
                      _block("on /"), _block("on x, ]")], S),
    (class_name, [_block("on x is"), _block("on x is Linear |"), _block("on x is 8")], S),
    # Tasks.
    (task_name, [f"{_H}task\n", f"{_H}task = a\n"], S),
    (task_equals, [f"{_H}task t a\n", f"{_H}task t\n"], S),
    (task_operand, [f"{_H}task t =\n", f"{_H}task t = a +\n", f"{_H}task t = (\n",
                    f"{_H}task t = frozen(\n", f"{_H}task t = +\n", f"{_H}task t = -\n"], S),
    (task_weight_after, [f"{_H}task t = 0.5 *\n", f"{_H}task t = a * 0.5\n"], S),
    (frozen_parens, [f"{_H}task t = frozen a\n"], S),
    (after_operand, [f"{_H}task t = (a + b\n", f"{_H}task t = frozen(a\n", f"{_H}task t = (a b\n"], S),
    (after_operand, [f"{_H}task t = a b\n", f"{_H}task t = a, b\n", f"{_H}task t = a - b\n",
                 f"{_H}task t = a * b * c\n", f"{_H}task t = (a) b\n", f"{_H}task t = frozen(a) b\n",
                 f"{_H}task t = a + b c\n", f"{_H}task t = a * 2\n"], S),
    # A selector alone (`adaptc match`).
    (selector_start, [",", "x,", "x except"], "selector_start"),
    (after_selector, ["x y", "x[0] y", "x -"], "selector_start"),
    (trailing_dot, ["x."], "selector_start"),
    (empty_alternative, ["x.{a,}", "x.{}"], "selector_start"),
    (unclosed_alternation, ["x.{a", "x.{a b}", "x.{a,"], "selector_start"),
    (unclosed_index, ["x[0", "x[0:"], "selector_start"),
]


# ----------------------------------------------------------------- by expected terminals

_SELECTOR_START = frozenset({"SEG", "STAR", "STARSTAR", "ROLE", "LBRACE"})


def _after_key(ctx: ErrorContext) -> Result:
    return placement_value(ctx) if ctx.prev in PLACEMENT_KEYS else selector_start(ctx)


def weight_star(ctx: ErrorContext) -> Result:
    return (f"expected '*' after the weight '{ctx.prev}', found {ctx.found}",
            "a weight scales what follows it: `0.5 * a`")


#: Fallbacks for states that no example reaches: (test on the expected terminals, label).
BY_EXPECTED: list[tuple] = [
    (lambda exp: exp == {"STAR"}, weight_star),
    (lambda exp: {"FROZEN", "NAME", "LPAR"} <= exp, task_operand),
    (lambda exp: {"RBRACE", "_NL"} <= exp and exp <= {"RBRACE", "_NL", "FOR"}, after_value),
    (lambda exp: exp == {"COMMA", "RBRACE"} or exp == {"COMMA", "RBRACE", "DOT", "LSQB"}, unclosed_alternation),
    (lambda exp: {"ON", "NAME", "RBRACE"} <= exp, property_key),
    (lambda exp: {"LET", "TASK", "USE"} <= exp, statement),
    (lambda exp: bool(exp) and exp <= {"_NL", "$END"}, end_of_statement),
    (lambda exp: _SELECTOR_START <= exp and "SLASH" in exp, _after_key),
    (lambda exp: _SELECTOR_START <= exp, segment_after_dot),
    (lambda exp: {"DOT", "LSQB", "COMMA"} <= exp, after_selector),
    (lambda exp: "RSQB" in exp, unclosed_index),
    (lambda exp: {"STAR", "SLASH", "PLUS", "MINUS"} <= exp, after_operand),
    (lambda exp: {"NUMBER", "NAME", "LPAR"} <= exp and "FROZEN" not in exp, incomplete_expression),
]
