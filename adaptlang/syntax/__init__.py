"""The syntax layer: grammar, parser, AST and formatter of ``.adapt`` files.

``parse_text`` / ``parse_file`` / ``parse_selector`` live in
:mod:`adaptlang.syntax.parser` and ``format_text`` in
:mod:`adaptlang.syntax.format`; they are imported from there (this package
stays import-light so that ``adaptlang.syntax.ast`` loads without Lark).
"""
