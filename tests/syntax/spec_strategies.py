"""Hypothesis strategies for random *valid* specs in random layouts.

A spec is drawn as statements made of tokens; the layout is drawn
separately: the whitespace in every gap (none where punctuation allows it),
blank lines, own-line and trailing comments, ``;`` between properties,
first property on the brace line, ``}`` after the last property, brace on
the next line. Values always check (ranks positive, weights only on
weightable deltas, each delta at most once per task), so ``load_spec``
succeeds on every draw.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

_WORDY = re.compile(r'[A-Za-z0-9_"%*@]')
NAMES = st.sampled_from(["q_proj", "v_proj", "k_proj", "mlp", "self_attn", "down_proj", "layers", "norm",
                         "lm_head", "weight", "bias", "h", "attn", "c_attn", "0", "12"])
COMMENT_TEXT = st.text(alphabet="abc xyz{}[];=#\"'.,-", max_size=12)


@st.composite
def index(draw) -> list[str]:
    form = draw(st.sampled_from(["one", "neg", "slice", "from", "step", "star", "list"]))
    n = str(draw(st.integers(0, 40)))
    body = {"one": [n], "neg": ["-", n], "slice": [n, ":", str(draw(st.integers(0, 40)))],
            "from": ["-", n, ":"], "step": [":", ":", str(draw(st.integers(1, 4)))], "star": ["*"],
            "list": [n, ",", str(draw(st.integers(0, 40)))]}[form]
    return ["[", *body, "]"]


@st.composite
def element(draw, depth: int = 0) -> list[str]:
    form = draw(st.sampled_from(["name", "name", "glob", "one", "many", "role"] + (["alt"] if depth < 1 else [])))
    if form == "name":
        toks = [draw(NAMES)]
    elif form == "glob":
        toks = [draw(st.sampled_from(["*_proj", "q*", "*attn*"]))]
    elif form == "one":
        toks = ["*"]
    elif form == "many":
        toks = ["**"]
    elif form == "role":
        toks = [draw(st.sampled_from(["@q", "@mlp", "@layers", "@head"]))]
    else:
        options = draw(st.lists(chain(depth + 1), min_size=2, max_size=3))
        toks = ["{"]
        for i, opt in enumerate(options):
            toks += ([","] if i else []) + opt
        toks.append("}")
    if form in ("name", "role", "alt") and draw(st.booleans()):
        toks += draw(index())
    return toks


@st.composite
def chain(draw, depth: int = 0) -> list[str]:
    parts = draw(st.lists(element(depth), min_size=1, max_size=3))
    toks = parts[0]
    for part in parts[1:]:
        toks = toks + ["."] + part
    return toks


@st.composite
def sel_path(draw) -> list[str]:
    toks = (["/"] if draw(st.integers(0, 5)) == 0 else []) + draw(chain())
    if draw(st.integers(0, 3)) == 0:
        toks += ["is", "Linear"] + (["|", "Conv1D"] if draw(st.booleans()) else [])
    return toks


@st.composite
def selector(draw) -> list[str]:
    paths = draw(st.lists(sel_path(), min_size=1, max_size=2))
    toks = paths[0]
    for p in paths[1:]:
        toks = toks + [","] + p
    if draw(st.integers(0, 4)) == 0:
        toks += ["except"] + draw(sel_path())
    return toks


def number(lo: float, hi: float, integer: bool = False):
    if integer:
        return st.integers(int(lo), int(hi)).map(str)
    return st.sampled_from([x for x in ("0.05", "0.1", "0.25", "0.5", "1", "2", "8", "16", "1e-2", ".5")
                            if lo <= float(x) <= hi])


@st.composite
def int_value(draw, consts: list[str]) -> list[str]:
    """A positive whole number, maybe from arithmetic over (positive, whole) constants."""
    form = draw(st.sampled_from(["lit", "const", "arith"] if consts else ["lit"]))
    if form == "lit":
        return [draw(number(1, 64, integer=True))]
    if form == "const":
        return [draw(st.sampled_from(consts))]
    return [draw(number(1, 4, integer=True)), "*", "(", draw(st.sampled_from(consts)), "+",
            draw(number(1, 4, integer=True)), ")"]


PROPS = {
    "lora": lambda d, c: [("rank", d(int_value(c))), ("alpha", d(int_value(c))),
                          ("dropout", [d(number(0, 0.5))]), ("init", [d(st.sampled_from(["kaiming", "zeros"]))]),
                          ("variant", [d(st.sampled_from(["lora", "dora", "rslora"]))]),
                          ("bias", [d(st.sampled_from(["true", "false"]))])],
    "ia3": lambda d, c: [("feedforward", [d(st.sampled_from(["true", "false"]))])],
    "adapter": lambda d, c: [("act", [d(st.sampled_from(["relu", "gelu", "silu", "tanh"]))]),
                             ("scale", [d(number(0.1, 2))]), ("residual", [d(st.sampled_from(["true", "false"]))])],
    "prompt": lambda d, c: [("init", d(st.sampled_from([["vocab"], ["random"], ["text", '"Say \\"hi\\":"']])))],
    "tune": lambda d, c: [],
    "sparse": lambda d, c: [("density", [d(st.sampled_from(["0.5%", "1%", "0.01", "1"]))]),
                            ("select", [d(st.sampled_from(["magnitude", "random"]))]),
                            ("seed", [d(number(0, 9, integer=True))])],
    "quantize": lambda d, c: [("block", d(int_value(c))), ("double", [d(st.sampled_from(["true", "false"]))]),
                              ("compute", [d(st.sampled_from(["float32", "bfloat16"]))])],
}
OVERRIDE = {"lora": ("rank", "alpha"), "sparse": ("seed",), "quantize": ("block",), "adapter": ("size",)}
PLACEMENT = {"lora": "on", "ia3": "on", "sparse": "on", "quantize": "on", "tune": "params"}
WEIGHTABLE = ("lora", "ia3", "adapter", "sparse")


@st.composite
def block(draw, kind: str, name: str, consts: list[str]) -> tuple[list[str], list[list[str]]]:
    """``(head tokens, property token lists)`` of one block."""
    props: list[list[str]] = []
    if kind == "adapter":
        props.append([draw(st.sampled_from(["after", "before", "parallel"]))] + draw(selector()))
        props.append([draw(st.sampled_from(["size", "reduction"]))] + draw(int_value(consts)))
    elif kind == "prompt":
        props.append(["tokens"] + draw(int_value(consts)))
    else:
        props.append([PLACEMENT[kind]] + draw(selector()))
    optional = PROPS[kind](draw, consts)
    chosen = draw(st.lists(st.sampled_from(range(len(optional))), unique=True, max_size=len(optional))) if optional else []
    props += [[optional[i][0], *optional[i][1]] for i in chosen]
    for key in OVERRIDE.get(kind, ())[: draw(st.integers(0, 1))]:
        value = dict(optional)[key] if key in dict(optional) else draw(int_value(consts))
        props.append([key, *value, "for", *draw(selector())])
    props = draw(st.permutations(props))
    head = ["quantize", "nf4"] if kind == "quantize" else [kind, name]
    return head, props


@st.composite
def task_expr(draw, deltas: list[tuple[str, str]]) -> list[str]:
    used = draw(st.lists(st.sampled_from(deltas), min_size=1, max_size=min(3, len(deltas)), unique=True))
    toks: list[str] = []
    for i, (name, kind) in enumerate(used):
        term = [name]
        form = draw(st.sampled_from(["plain", "weight", "frozen", "group"]))
        if form == "weight" and kind in WEIGHTABLE:
            term = [draw(number(0.1, 2)), "*", name]
        elif form == "frozen":
            term = ["frozen", "(", name, ")"]
        elif form == "group":
            term = ["(", name, ")"]
        toks += (["+"] if i else []) + term
    return toks


@st.composite
def spec_statements(draw) -> list[tuple[str, object]]:
    """Statements as ``("line", tokens)`` or ``("block", (head, props))``, in a drawn order."""
    consts = [f"c{i}" for i in range(draw(st.integers(0, 2)))]
    stmts: list[tuple[str, object]] = [("line", ["let", c, "=", *draw(int_value(consts[:i]))])
                                       for i, c in enumerate(consts)]
    if draw(st.booleans()):
        stmts.append(("line", ["model", draw(st.sampled_from(["llama", "gpt2", "bert-base", '"some/dir"']))]))
    kinds = draw(st.lists(st.sampled_from(["lora", "ia3", "adapter", "prompt", "tune", "sparse"]),
                          min_size=1, max_size=4))
    deltas = [(f"d{i}", kind) for i, kind in enumerate(kinds)]
    for name, kind in deltas:
        stmts.append(("block", draw(block(kind, name, consts))))
    if draw(st.integers(0, 3)) == 0:
        stmts.append(("block", draw(block("quantize", "", consts))))
    for t in range(draw(st.integers(0, 3))):
        stmts.append(("line", ["task", f"t{t}", "=", *draw(task_expr(deltas))]))
    # Statements are declarative: any order means the same, except the header comes first.
    return [("line", ["adaptlang", "1"])] + draw(st.permutations(stmts))


# ------------------------------------------------------------------ layout


@st.composite
def join(draw, toks: list[str]) -> str:
    out = toks[0]
    for tok in toks[1:]:
        needs = bool(_WORDY.match(out[-1]) and _WORDY.match(tok[0])) or out[-1] == "*" or tok[0] == "*"
        gap = draw(st.sampled_from([" ", "  ", "\t"] if needs else ["", "", " ", "  "]))
        out += gap + tok
    return out


@st.composite
def line_end(draw, allow_comment: bool = True) -> str:
    """The end of a line: maybe a trailing comment, then a newline, blank lines and own-line comments."""
    end = ""
    if allow_comment and draw(st.integers(0, 3)) == 0:
        end += draw(st.sampled_from([" ", "   ", "\t"])) + "# " + draw(COMMENT_TEXT)
    end += "\n"
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            end += draw(st.sampled_from(["", "    ", "  "])) + "# " + draw(COMMENT_TEXT) + "\n"
        else:
            end += draw(st.sampled_from(["\n", "   \n"]))
    return end


@st.composite
def layout(draw, stmts: list[tuple[str, object]]) -> str:
    """The text of the statements in a random (valid) layout."""
    text = draw(st.sampled_from(["", "# leading comment\n", "\n"]))
    for kind, body in stmts:
        if kind == "line":
            text += draw(join(body)) + draw(line_end())
            continue
        head, props = body
        text += draw(join(head))
        text += draw(st.sampled_from([" {", "{"])) if draw(st.integers(0, 3)) else draw(line_end()) + "{"
        first_inline = bool(props) and draw(st.booleans())
        text += " " if first_inline else draw(line_end())
        for i, prop in enumerate(props):
            last = i == len(props) - 1
            text += draw(st.sampled_from(["    ", "  ", "\t", ""])) if not (i == 0 and first_inline) else ""
            text += draw(join(prop))
            if last and draw(st.booleans()):
                text += " }" + draw(line_end())
                break
            text += draw(st.sampled_from([";", " ; "])) if not last and draw(st.integers(0, 3)) == 0 else draw(line_end())
        else:
            text += "}" + draw(line_end())
    return text


@st.composite
def messy_specs(draw) -> str:
    """A random valid spec in a random layout."""
    return draw(layout(draw(spec_statements())))
