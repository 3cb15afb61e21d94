"""``use "other.adapt"``: imports merge deltas and tasks; cycles, missing files and clashes are located."""

from __future__ import annotations

import os

import pytest

from adaptlang.errors import SpecError
from adaptlang.spec import load_spec

H = "adaptlang 1\n"
COMMON = H + "let r = 4\nlora attn {\n    on q_proj\n    rank r\n}\ntask base = attn\nmodel gpt2\n" \
             "quantize nf4 {\n    on x\n}\n"


def test_imports_come_first_and_merge(write_specs):
    root = write_specs({
        "lib/common.adapt": COMMON,
        "main.adapt": H + 'use "lib/common.adapt"\nlet r = 16\nlora mlp {\n    on down_proj\n    rank r\n}\n'
                          "task both = base + mlp\n",
    })
    spec = load_spec(root / "main.adapt")
    assert list(spec.deltas) == ["attn", "mlp"] and list(spec.tasks) == ["base", "both"]
    assert spec.deltas["attn"].rank == 4 and spec.deltas["mlp"].rank == 16  # constants are per file
    assert [t.delta for t in spec.tasks["both"].terms] == ["attn", "mlp"]
    assert spec.model is None and spec.quantize == []  # the imported file's base is its own
    main = str(root / "main.adapt")
    common = os.path.normpath(os.path.join(str(root), "lib/common.adapt"))
    assert set(spec.sources) == {main, common}
    assert spec.deltas["attn"].source_file == common


def test_use_paths_are_relative_to_the_using_file(write_specs):
    root = write_specs({
        "a/top.adapt": H + 'use "../b/mid.adapt"\ntask t = leaf\n',
        "b/mid.adapt": H + 'use "deep/leaf.adapt"\n',
        "b/deep/leaf.adapt": H + "ia3 leaf {\n    on k_proj\n}\n",
    })
    spec = load_spec(root / "a" / "top.adapt")
    assert list(spec.deltas) == ["leaf"]


def test_text_input_uses_the_working_directory(write_specs, monkeypatch):
    root = write_specs({"common.adapt": COMMON})
    monkeypatch.chdir(root)
    spec = load_spec(H + 'use "common.adapt"\ntask t = base\n')
    assert "common.adapt" in spec.sources and "<string>" in spec.sources


def test_a_diamond_is_loaded_once(write_specs):
    root = write_specs({
        "common.adapt": COMMON,
        "left.adapt": H + 'use "common.adapt"\n',
        "right.adapt": H + 'use "common.adapt"\n',
        "main.adapt": H + 'use "left.adapt"\nuse "right.adapt"\n',
    })
    assert list(load_spec(root / "main.adapt").deltas) == ["attn"]


def test_a_cycle_is_reported_with_its_chain(write_specs, expect_rendered, monkeypatch):
    root = write_specs({
        "a.adapt": H + 'use "b.adapt"\nlora x {\n    on q\n}\n',
        "b.adapt": H + 'use "a.adapt"\n',
    })
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as err:
        load_spec("a.adapt")
    (diag,) = err.value.diagnostics
    expect_rendered(err.value.render(), "b.adapt", 2, 1, "`use` cycle: a.adapt -> b.adapt -> a.adapt")


def test_a_missing_file_is_located_at_the_use(write_specs, expect_rendered, monkeypatch):
    root = write_specs({"main.adapt": H + '\nuse "nope.adapt"\n'})
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as err:
        load_spec("main.adapt")
    expect_rendered(err.value.render(), "main.adapt", 3, 1, "cannot find 'nope.adapt'", "relative to the file")
    assert "looked for nope.adapt" in err.value.render()


def test_a_name_clash_names_both_places(write_specs, expect_rendered, monkeypatch):
    root = write_specs({"common.adapt": COMMON, "main.adapt": H + 'use "common.adapt"\ntask base = attn\n'})
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as err:
        load_spec("main.adapt")
    expect_rendered(err.value.render(), "main.adapt", 3, 6, "'base' is defined twice: here and at common.adapt:7:6")


def test_errors_in_an_imported_file_show_its_line(write_specs, expect_rendered, monkeypatch):
    root = write_specs({"lib.adapt": H + "lora a {\n    on q\n    rnak 8\n}\n",
                        "main.adapt": H + 'use "lib.adapt"\ntask t = a\n'})
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as err:
        load_spec("main.adapt")
    expect_rendered(err.value.render(), "lib.adapt", 4, 5, "unknown property 'rnak'", "did you mean 'rank'?")
    assert "        rnak 8" in err.value.render().splitlines()


def test_a_syntax_error_in_an_imported_file(write_specs, expect_rendered, monkeypatch):
    root = write_specs({"lib.adapt": H + "lora a {\n    on q\n", "main.adapt": H + 'use "lib.adapt"\n'})
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as err:
        load_spec("main.adapt")
    expect_rendered(err.value.render(), "lib.adapt", 3, 9, "expected '}' to close 'lora a' opened at 2:8")
