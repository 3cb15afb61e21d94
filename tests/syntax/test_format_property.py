"""Property-based: on random valid specs in random layouts, formatting is idempotent and keeps meaning."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text
from adaptlang.syntax.parser import parse_text

from .spec_strategies import messy_specs


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messy_specs())
def test_format_is_idempotent_keeps_meaning_and_comments(source):
    once = format_text(source)
    assert format_text(once) == once
    assert load_spec(once).canonical() == load_spec(source).canonical()
    assert [c.text for c in parse_text(once).comments] == [c.text for c in parse_text(source).comments]
