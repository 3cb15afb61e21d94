"""Hostile ``use``: only regular ``.adapt`` files are read; every refusal is located at the ``use``.

Issue 10, sections 2 and 4: ``use "/proc/self/environ"`` was read and its
content printed in the error; a FIFO would hang; a symlink loop, a NUL byte
and a 5,000-character name were internal errors; a chain of 500 files hit
Python's recursion limit. Each case asserts a SpecError (exit 1) at the
``use`` line with a piece of its message; those that used to hang also finish
within a generous bound.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from adaptlang.errors import SpecError, UsageError
from adaptlang.limits import MAX_USE_DEPTH
from adaptlang.spec import load_spec

H = "adaptlang 1\n"
LEAF = H + "ia3 leaf {\n    on k_proj\n}\n"
SECRET = "ADAPTLANG_TEST_SECRET_VALUE_7f3a"
FAST = 10.0  # seconds; a FIFO used to block forever


def _fifo(root: Path) -> str:
    os.mkfifo(root / "pipe.adapt")
    return "pipe.adapt"


def _dir(root: Path) -> str:
    (root / "folder.adapt").mkdir()
    return "folder.adapt"


def _link(root: Path, name: str, target: str) -> str:
    (root / name).symlink_to(target)
    return name


def _loop(root: Path) -> str:
    (root / "loop.adapt").symlink_to(root / "loop2.adapt")
    (root / "loop2.adapt").symlink_to(root / "loop.adapt")
    return "loop.adapt"


def _bytes(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return name


def _unreadable(root: Path) -> str:
    path = root / "secret.adapt"
    path.write_text(LEAF, encoding="utf-8")
    path.chmod(0)
    return "secret.adapt"


# id, a function making the used path under the spec's folder, a piece of the message
CASES = [
    ("proc-self-environ", lambda root: "/proc/self/environ", "is not a .adapt file"),
    ("link-to-proc-self-environ", lambda root: _link(root, "env.adapt", "/proc/self/environ"),
     "which is not a .adapt file"),
    ("dev-zero-link", lambda root: _link(root, "zero.adapt", "/dev/zero"), "is a device, not a regular file"),
    ("dev-null", lambda root: "/dev/null", "is not a .adapt file"),
    ("fifo", _fifo, "is a named pipe (FIFO), not a regular file"),
    ("directory", _dir, "is a directory, not a regular file"),
    ("symlink-loop", _loop, "is a symbolic link loop"),
    ("nul-byte", lambda root: "a\0b.adapt", "contains a NUL byte"),
    ("name-5000-chars", lambda root: "x" * 4994 + ".adapt", "too long"),
    ("path-5000-chars", lambda root: "/".join(["d" * 200] * 25) + ".adapt", "does not exist|too long"),
    ("not-utf8", lambda root: _bytes(root, "latin1.adapt", H.encode() + "# caf\xe9\n".encode("latin-1")),
     "is not UTF-8 text (byte 0xe9"),
    ("not-dot-adapt", lambda root: _bytes(root, "notes.txt", LEAF.encode()), "is not a .adapt file"),
    ("missing", lambda root: "nope.adapt", "cannot find 'nope.adapt'"),
    ("dangling-link", lambda root: _link(root, "gone.adapt", "nowhere.adapt"), "cannot find 'gone.adapt'"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_use_refuses_what_is_not_a_regular_adapt_file(tmp_path, monkeypatch, make, message):
    monkeypatch.setenv(SECRET, SECRET)
    used = make(tmp_path)
    main = tmp_path / "main.adapt"
    main.write_text(H + f'use "{used}"\n' + "lora a {\n    on q_proj\n}\n", encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(main)
    assert time.perf_counter() - start < FAST
    rendered = err.value.render()
    assert err.value.exit_code == 1
    assert any(piece in rendered for piece in message.split("|")), rendered
    assert [d.span.line for d in err.value.diagnostics] == [2], rendered  # at the `use`
    assert SECRET not in rendered  # a refused file's content is never shown
    assert len(err.value.diagnostics[0].message) < 600  # a 5,000-character name is shortened


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_use_of_an_unreadable_file_is_located(tmp_path):
    used = _unreadable(tmp_path)
    main = tmp_path / "main.adapt"
    main.write_text(H + f'use "{used}"\n', encoding="utf-8")
    with pytest.raises(SpecError, match="permission denied"):
        load_spec(main)


def test_use_of_a_file_past_the_size_limit(tmp_path, monkeypatch):
    import adaptlang.spec.lower as lower

    monkeypatch.setattr(lower, "MAX_SPEC_FILE_BYTES", 1000)
    (tmp_path / "big.adapt").write_text(H + "#" * 2000 + "\n", encoding="utf-8")
    main = tmp_path / "main.adapt"
    main.write_text(H + 'use "big.adapt"\n', encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(main)
    assert "is too big: 2,013 bytes, past the limit of 1,000 bytes for a spec file (MAX_SPEC_FILE_BYTES)" \
        in err.value.render()


def test_a_link_to_an_adapt_file_still_works(tmp_path):
    (tmp_path / "v3.adapt").write_text(LEAF, encoding="utf-8")
    (tmp_path / "current.adapt").symlink_to(tmp_path / "v3.adapt")
    main = tmp_path / "main.adapt"
    main.write_text(H + 'use "current.adapt"\n', encoding="utf-8")
    assert list(load_spec(main).deltas) == ["leaf"]


ROOTS = [
    ("root-fifo", _fifo, "is a named pipe (FIFO), not a regular file"),
    ("root-directory", _dir, "is a directory, not a regular file"),
    ("root-symlink-loop", _loop, "is a symbolic link loop"),
    ("root-not-utf8", lambda root: _bytes(root, "bad.adapt", b"adaptlang 1\n\xff\n"), "is not UTF-8 text"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in ROOTS], ids=[c[0] for c in ROOTS])
def test_the_root_spec_file_is_read_the_same_way(tmp_path, make, message):
    start = time.perf_counter()
    with pytest.raises(UsageError) as err:
        load_spec(tmp_path / make(tmp_path))
    assert time.perf_counter() - start < FAST
    assert err.value.exit_code == 2 and message in err.value.render()


def _chain(root: Path, n: int) -> Path:
    for i in range(n):
        nxt = f'use "f{i + 1}.adapt"\n' if i + 1 < n else ""
        (root / f"f{i}.adapt").write_text(H + nxt + f"ia3 d{i} {{\n    on k_proj\n}}\n", encoding="utf-8")
    return root / "f0.adapt"


@pytest.mark.parametrize("n", [MAX_USE_DEPTH + 1, 500], ids=["chain-65-files", "chain-500-files"])
def test_a_use_chain_past_the_limit_is_located(tmp_path, n):
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(_chain(tmp_path, n))
    assert time.perf_counter() - start < FAST
    diags = err.value.diagnostics
    assert len(diags) == 1 and diags[0].span.line == 2
    assert diags[0].span.file.endswith(f"f{MAX_USE_DEPTH - 1}.adapt")
    assert f"past the limit of {MAX_USE_DEPTH} (MAX_USE_DEPTH)" in err.value.render()


def test_a_use_chain_at_the_limit_loads(tmp_path):
    spec = load_spec(_chain(tmp_path, MAX_USE_DEPTH))
    assert len(spec.deltas) == MAX_USE_DEPTH


def test_a_use_cycle_of_500_files_is_cut_at_the_depth_limit(tmp_path):
    for i in range(500):
        (tmp_path / f"c{i}.adapt").write_text(H + f'use "c{(i + 1) % 500}.adapt"\n', encoding="utf-8")
    with pytest.raises(SpecError, match="MAX_USE_DEPTH"):
        load_spec(tmp_path / "c0.adapt")
