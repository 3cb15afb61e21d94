"""The selector engine: which modules and parameters a selector names.

Each selector path is compiled to a small nondeterministic automaton over
path segments (Thompson's construction: ``**`` is a state that loops on any
segment, ``{a, b}`` branches, a role consumes segments until the path so far
is a module with that role). The module tree is then walked once, in model
order: every module's state set comes from its parent's by consuming one
segment, so a prefix shared by 80 layers is matched once per layer, not once
per descendant, and there is no backtracking. State sets are interned and
steps memoised by (state set, segment name), which makes the walk over a
70B model's thousand modules take a few milliseconds.

Semantics (LANGUAGE.md, "Selectors"): without a leading ``/`` a path may
start at any segment; it always runs to the end. ``[...]`` picks children of
the list-like module that the previous element reached (negative indices
count from its end). ``is A | B`` keeps modules with one of those classes
anywhere in their MRO (a parameter: its module's class). ``except`` subtracts.
A path whose last segment is a parameter name names parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from adaptlang.errors import BindError, Diagnostic
from adaptlang.plan.select_errors import (
    excluded_all_diagnostic, explain_empty, index_diagnostic, render_elements, render_selpath,
    role_diagnostic)
from adaptlang.syntax import ast

__all__ = ["match_modules", "match_params", "match_targets", "render_selpath", "selector_matches_path"]


def match_modules(sig: Any, selector: ast.Selector, *, role_error: bool = True) -> list[str]:
    """Returns the module paths a selector names, in model order.

    Args:
        sig: The model's :class:`~adaptlang.plan.signature.ModelSignature`.
        selector: The parsed selector.
        role_error: When False, a role the model lacks matches nothing
            instead of raising, and a path left empty by it is skipped (so
            ``@gate, @up`` on GPT-2 is its ``@up``; the result may be empty).

    Raises:
        BindError: A path that matches no module (with the nearest real
            paths), one that names parameters, an unknown role, an index out
            of range, or exceptions that remove every match.
    """
    result = _evaluate(sig, selector, role_error)
    found: set[str] = set()
    for path, part in zip(selector.include, result.include):
        if not part.modules and not part.missing_role:
            raise BindError(explain_empty(sig, path, part, want="modules"))
        found.update(part.modules)
    if not found:
        return []  # only paths through roles the model lacks (role_error=False)
    return _finish(sig, selector, _ordered_modules(sig, found - result.excluded_modules))


def match_params(sig: Any, selector: ast.Selector) -> list[tuple[str, str]]:
    """Returns the ``(module path, parameter name)`` pairs a selector names, in model order.

    Raises:
        BindError: A path that matches no parameter, an unknown role, an index
            out of range, or exceptions that remove every match.
    """
    result = _evaluate(sig, selector, True)
    found: set[tuple[str, str]] = set()
    for path, part in zip(selector.include, result.include):
        if not part.params:
            raise BindError(explain_empty(sig, path, part, want="parameters"))
        found.update(part.params)
    return _finish(sig, selector, _ordered_params(sig, result.subtract_params(found)))


def match_targets(sig: Any, selector: ast.Selector) -> tuple[list[str], list[tuple[str, str]]]:
    """Returns ``(modules, params)`` a selector names, each in model order.

    A selector path names modules when it matches any; otherwise the
    parameters it matches (``**.bias``, ``lm_head.weight``). ``tune`` takes
    both (a module means all of its parameters).

    Raises:
        BindError: A path that matches nothing, an unknown role, an index out
            of range, or exceptions that remove every match.
    """
    result = _evaluate(sig, selector, True)
    modules: set[str] = set()
    params: set[tuple[str, str]] = set()
    for path, part in zip(selector.include, result.include):
        if part.modules:
            modules.update(part.modules)
        elif part.params:
            params.update(part.params)
        else:
            raise BindError(explain_empty(sig, path, part, want="modules or parameters"))
    mods = _ordered_modules(sig, modules - result.excluded_modules)
    pars = _ordered_params(sig, result.subtract_params(params))
    if not mods and not pars:
        raise BindError(excluded_all_diagnostic(sig, selector))
    return mods, pars


def selector_matches_path(sig: Any, selector: ast.Selector, path: str,
                          memo: dict[int, Any] | None = None) -> bool:
    """Whether a selector matches one module path or ``module.param`` path (``for`` overrides).

    The selector is matched against the whole model once and the answer kept
    in ``memo`` (one dict per compile, see :class:`~adaptlang.plan.binder.Binder`),
    so checking every site of a delta against any number of overrides stays
    linear. (A fixed memo of 32 entries made the 33rd override evict the
    others on every site: 33 overrides took 11 s on Llama-2-70B, 300 over 60 s.)
    Without ``memo`` the selector is matched afresh.

    Raises:
        BindError: As :func:`match_targets`, when the selector matches nothing
            in the model at all.
    """
    if memo is None:
        modules, params = _targets(sig, selector)
    else:
        # Keyed by identity (selectors are not hashable); the entry keeps the selector
        # alive, so its id is not reused within the compile.
        found = memo.get(id(selector))
        if found is None or found[0] is not selector or found[1] is not sig:
            found = memo[id(selector)] = (selector, sig, _targets(sig, selector))
        modules, params = found[2]
    return path in modules or path in params


# ----------------------------------------------------------------------
# Evaluation.


@dataclass
class _PathResult:
    """What one selector path matched, before and after its class filter."""

    modules: set[str] = field(default_factory=set)
    params: set[tuple[str, str]] = field(default_factory=set)
    unfiltered: list[str] = field(default_factory=list)
    missing_role: bool = False


@dataclass
class _Result:
    """Per include path results, and what the exceptions remove."""

    include: list[_PathResult]
    excluded_modules: set[str]
    excluded_params: set[tuple[str, str]]

    def subtract_params(self, params: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Removes excluded parameters and those of excluded modules."""
        return {p for p in params if p not in self.excluded_params and p[0] not in self.excluded_modules}


def _evaluate(sig: Any, selector: ast.Selector, role_error: bool) -> _Result:
    """Matches every path of ``selector``; raises for unknown roles, bad indices, dead alternatives."""
    include = [_match_path(sig, p, role_error, strict=True) for p in selector.include]
    for path, part in zip(selector.include, include):
        if part.unfiltered or part.params:
            _check_alternatives(sig, path, role_error)
    excluded_modules: set[str] = set()
    excluded_params: set[tuple[str, str]] = set()
    for path in selector.exclude:
        part = _match_path(sig, path, role_error, strict=False)
        excluded_modules |= part.modules
        excluded_params |= part.params
    return _Result(include, excluded_modules, excluded_params)


def _check_alternatives(sig: Any, path: ast.SelPath, role_error: bool) -> None:
    """Raises when one option of a ``{a, b}`` matches nothing while the path as a whole does.

    ``{q_prj, v_proj}`` would otherwise quietly bind only ``v_proj``: a typo in
    one alternative is the commonest selector mistake, so each option must
    match something on its own (the rest of the path kept as written).
    """
    for i, el in enumerate(path.elements):
        if not isinstance(el, ast.Alt) or len(el.options) < 2:
            continue
        for option in el.options:
            variant = path.model_copy(update={
                "elements": [*path.elements[:i], *option, *path.elements[i + 1:]],
                "span": _span_of(option, el.span)})
            part = _match_path(sig, variant, role_error, strict=False)
            if not part.unfiltered and not part.params and not part.missing_role:
                diag = explain_empty(sig, variant, part, want="modules or parameters")
                raise BindError(diag.__class__(
                    f"the alternative '{render_elements(option)}' in '{render_selpath(path)}' "
                    f"matches nothing in {sig.name}",
                    span=diag.span, hint=diag.hint, notes=diag.notes))


def _span_of(elements: list[Any], default: Any) -> Any:
    """The span from the first to the last of ``elements`` (``default`` when empty)."""
    if not elements:
        return default
    first, last = elements[0].span, elements[-1].span
    return first.__class__(first.file, first.line, first.col, last.end_line, last.end_col)


def _match_path(sig: Any, path: ast.SelPath, role_error: bool, strict: bool) -> _PathResult:
    """Walks the module tree with one path's automaton."""
    auto = _Automaton(sig, path, role_error)
    unanchored = not path.anchored
    classes = set(path.classes)
    result = _PathResult()
    active: dict[str, int] = {"": auto.with_start(auto.start_id) if unanchored else auto.start_id}
    if path.anchored and auto.accepting(auto.start_id):
        result.unfiltered.append("")
    modules = sig.modules
    for mpath, info in modules.items():
        if mpath:
            parent, _, name = mpath.rpartition(".")
            from_id = active.get(parent)
            if from_id is None:
                continue
            sid = auto.step(from_id, name, parent, modules[parent], mpath)
            if auto.accepting(sid):
                result.unfiltered.append(mpath)
            active[mpath] = auto.with_start(sid) if unanchored else sid
        here = active[mpath]
        if auto.is_dead(here) or not info.params:
            continue
        keep = not classes or not classes.isdisjoint(info.bases)
        for p in info.params:
            full = f"{mpath}.{p.name}" if mpath else p.name
            if keep and auto.accepting(auto.step(here, p.name, mpath, None, full)):
                result.params.add((mpath, p.name))
    result.modules = {p for p in result.unfiltered if not classes or not classes.isdisjoint(modules[p].bases)}
    result.missing_role = auto.missing_role
    diag = index_diagnostic(path, auto.index_trace, matched=bool(result.modules or result.params))
    if strict and diag is not None:
        raise BindError(diag)
    return result


class _Automaton:
    """A selector path as an NFA over segments, with interned, memoised state sets.

    Consuming moves are ``(kind, arg, target)``: ``name`` (a compiled glob),
    ``any``, ``index`` (an :class:`ast.Index`, checked against the parent
    module), ``hit`` (the path so far is one of a role's modules) and
    ``prefix`` (the path so far leads to one of them: keep consuming).
    """

    def __init__(self, sig: Any, path: ast.SelPath, role_error: bool):
        self.sig = sig
        self.role_error = role_error
        self.missing_role = False
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[str, Any, int]]] = []
        self.index_trace: dict[int, tuple[ast.Index, dict[str, int], list[str]]] = {}
        start = self._new()
        self.accept = self._build(path.elements, start)
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._closures: dict[frozenset[int], int] = {}
        self._steps: dict[tuple[int, str], frozenset[int]] = {}
        self._starts: dict[int, int] = {}
        self._context: list[list[tuple[str, Any, int]]] = []
        self._live: list[bool] = []
        self._picked: dict[tuple[int, int], frozenset[int]] = {}
        self.start_id = self._close({start})
        self._start_set = self._sets[self.start_id]

    # -- construction ---------------------------------------------------

    def _new(self) -> int:
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def _link(self, src: int, kind: str, arg: Any) -> int:
        dst = self._new()
        self.moves[src].append((kind, arg, dst))
        return dst

    def _build(self, elements: Iterable[Any], cur: int) -> int:
        """Adds ``elements`` after state ``cur``; returns the state after them."""
        for el in elements:
            if isinstance(el, ast.NamePat):
                cur = self._link(cur, "name", _compile_glob(el.pattern))
            elif isinstance(el, ast.AnyOne):
                cur = self._link(cur, "any", None)
            elif isinstance(el, ast.AnyMany):
                loop = self._new()
                self.eps[cur].append(loop)
                self.moves[loop].append(("any", None, loop))
                cur = loop
            elif isinstance(el, ast.Index):
                cur = self._link(cur, "index", el)
                self.index_trace[id(el)] = (el, {}, [])
            elif isinstance(el, ast.Role):
                paths, prefixes = self._role_sets(el)
                wait = self._new()
                self.eps[cur].append(wait)
                self.moves[wait].append(("prefix", prefixes, wait))
                cur = self._link(wait, "hit", paths)
            elif isinstance(el, ast.Alt):
                join = self._new()
                for option in el.options:
                    branch = self._new()
                    self.eps[cur].append(branch)
                    self.eps[self._build(option, branch)].append(join)
                cur = join
            else:  # pragma: no cover - the AST has no other element
                raise TypeError(f"unknown selector element {type(el).__name__}")
        return cur

    def _role_sets(self, el: ast.Role) -> tuple[frozenset[str], frozenset[str]]:
        """Returns a role's module paths and every proper prefix of them."""
        roles = self.sig.roles
        if el.name not in roles:
            if self.role_error:
                raise BindError(role_diagnostic(self.sig, el))
            self.missing_role = True
            return frozenset(), frozenset()
        paths = frozenset(roles[el.name])
        prefixes = set()
        for p in paths:
            while "." in p:
                p = p.rpartition(".")[0]
                prefixes.add(p)
        return paths, frozenset(prefixes)

    # -- running --------------------------------------------------------

    def _close(self, states: Iterable[int]) -> int:
        """Interns the epsilon closure of ``states``; returns its id."""
        raw = frozenset(states)
        sid = self._closures.get(raw)
        if sid is not None:
            return sid
        seen, todo = set(raw), list(raw)
        while todo:
            for nxt in self.eps[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        closed = frozenset(seen)
        sid = self._ids.get(closed)
        if sid is None:
            sid = self._ids[closed] = len(self._sets)
            self._sets.append(closed)
            moves = [m for st in closed for m in self.moves[st]]
            self._context.append([m for m in moves if m[0] not in ("any", "name")])
            self._live.append(bool(moves))
        self._closures[raw] = sid
        return sid

    def with_start(self, sid: int) -> int:
        """The set plus a fresh start (an unanchored path may begin at the next segment)."""
        found = self._starts.get(sid)
        if found is None:
            found = self._starts[sid] = self._close(self._sets[sid] | self._start_set)
        return found

    def accepting(self, sid: int) -> bool:
        """Whether the path so far is a match."""
        return self.accept in self._sets[sid]

    def is_dead(self, sid: int) -> bool:
        """Whether no further segment can lead to a match."""
        return not self._live[sid]

    def step(self, sid: int, name: str, parent: str, parent_info: Any, path: str) -> int:
        """Consumes one segment ``name`` (reaching ``path``) from state set ``sid``.

        Moves on the name alone are memoised per (set, name); index and role
        moves depend on where the segment is and are checked each time.
        """
        key = (sid, name)
        targets = self._steps.get(key)
        if targets is None:
            found = {dst for st in self._sets[sid] for kind, arg, dst in self.moves[st]
                     if kind == "any" or (kind == "name" and arg(name))}
            targets = self._steps[key] = frozenset(found)
        context = self._context[sid]
        if context:
            extra = {dst for kind, arg, dst in context
                     if self._context_move(kind, arg, name, parent, parent_info, path)}
            if extra:
                targets = targets | extra
        return self._close(targets)

    def _context_move(self, kind: str, arg: Any, name: str, parent: str, parent_info: Any,
                      path: str) -> bool:
        """Checks an ``index``, ``hit`` or ``prefix`` move for one segment."""
        if kind != "index":
            return path in arg  # hit: a role's module; prefix: on the way to one
        if parent_info is None:
            return False  # a parameter is never a list item
        _, lists, non_lists = self.index_trace[id(arg)]
        if not parent_info.is_list:
            if not non_lists:
                non_lists.append(parent)
            return False
        n = len(parent_info.children)
        lists.setdefault(parent, n)
        picked = self._picked.get((id(arg), n))
        if picked is None:
            picked = self._picked[(id(arg), n)] = _resolve_index(arg, n)
        return name.isdigit() and int(name) in picked


def _compile_glob(pattern: str) -> Any:
    """Returns a predicate for one segment: ``*`` any run of characters, ``?`` one."""
    if "*" not in pattern and "?" not in pattern:
        return pattern.__eq__
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex + r"\Z", re.S).match


def _resolve_index(el: ast.Index, n: int) -> frozenset[int]:
    """Returns the positions an index picks in a list of ``n`` children."""
    picked: set[int] = set()
    for item in el.items:
        if item == "*":
            picked.update(range(n))
        elif isinstance(item, ast.Slice):
            if item.step == 0:
                raise BindError(Diagnostic("a slice step cannot be zero", span=el.span))
            picked.update(range(n)[slice(item.start, item.stop, item.step)])
        elif -n <= item < n:
            picked.add(item % n)
    return frozenset(picked)


# ----------------------------------------------------------------------
# Results.


def _ordered_modules(sig: Any, found: set[str]) -> list[str]:
    return [p for p in sig.modules if p in found]


def _ordered_params(sig: Any, found: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(path, p.name) for path, info in sig.modules.items() for p in info.params
            if (path, p.name) in found]


def _finish(sig: Any, selector: ast.Selector, found: list[Any]) -> list[Any]:
    """Returns ``found``, or raises when the exceptions removed every match."""
    if found:
        return found
    raise BindError(excluded_all_diagnostic(sig, selector))


def _targets(sig: Any, selector: ast.Selector) -> tuple[set[str], set[str]]:
    """Every module path and ``module.param`` path a selector matches."""
    result = _evaluate(sig, selector, True)
    modules: set[str] = set()
    params: set[tuple[str, str]] = set()
    for path, part in zip(selector.include, result.include):
        if not part.modules and not part.params:
            raise BindError(explain_empty(sig, path, part, want="modules or parameters"))
        modules |= part.modules
        params |= part.params
    return (modules - result.excluded_modules,
            {f"{m}.{p}" if m else p for m, p in result.subtract_params(params)})
