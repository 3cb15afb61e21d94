"""The .adapt grammar, shipped as package data (adapt.lark)."""
