"""Issue 10 §2: ``adaptc diff`` writes nothing outside its temporary folder and passes git no options.

``adaptc diff REV:path ...`` copies the spec and every file it ``use``s from
the revision into a temporary folder. A committed ``use`` that climbs out of
the repository, an absolute one, or a symbolic link must not make it write
anywhere else; an operand spelt like an option (``--output=FILE:x``) must
not reach ``git show`` as one.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import TRACEBACK, git, invoke

SPEC = "adaptlang 1\nlora a {\n    on   q_proj\n    rank 2\n}\ntask t = a\n"
EVIL = "adaptlang 1\nlora evil {\n    on   q_proj\n    rank 3\n}\n"


@pytest.fixture
def deep(tmp_path, monkeypatch):
    """A repository in tmp_path/repo; temporary folders under tmp_path/t1/t2/t3, so a write
    that climbs four levels out of the diff's folder lands in tmp_path/t1 (not in the real /tmp)."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    temp = tmp_path / "t1" / "t2" / "t3"
    temp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(root)
    return root


def commit(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "c")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


USES = {
    # `use` paths in a spec at the repository root, diffed from specs/a/b/c (git reads `../` from there)
    "climb-to-committed-tmp": '../../../../tmp/x/evil.adapt',
    "climb-one-level": '../tmp/x/evil.adapt',
    "climb-past-root": '../../../../../../../../../tmp/x/evil.adapt',
    "absolute": '/tmp/adaptlang-hostile-never/evil.adapt',
    "dotdot-in-middle": 'd/../../../../../../x/evil.adapt',
}


@pytest.mark.parametrize("use", list(USES.values()), ids=list(USES))
def test_a_committed_use_that_leaves_the_repository_writes_nothing_outside(runner, deep, tmp_path, use,
                                                                          monkeypatch):
    commit(deep, {"s.adapt": f'{SPEC}use "{use}"\n', "tmp/x/evil.adapt": EVIL, "specs/a/b/c/keep": ""})
    precious = tmp_path / "t1" / "tmp" / "x" / "evil.adapt"
    precious.parent.mkdir(parents=True)
    precious.write_text("precious\n")
    before = files_under(tmp_path / "t1")
    monkeypatch.chdir(deep / "specs" / "a" / "b" / "c")
    result = invoke(runner, "diff", "HEAD:s.adapt", str(deep / "s.adapt"))
    assert result.exit_code in (1, 2), result.output
    assert "leaves the repository" in result.stderr, result.stderr
    assert TRACEBACK not in result.output
    assert precious.read_text() == "precious\n"
    assert files_under(tmp_path / "t1") == before  # the diff's own folder is gone, nothing else appeared
    assert not Path("/tmp/adaptlang-hostile-never").exists()


def test_a_use_climbing_from_a_subfolder_cwd_is_refused(runner, deep, tmp_path, monkeypatch):
    """The issue's case: from specs/a/b/c, `HEAD:./s.adapt` whose `use` climbs 4 levels to a committed tmp/x.adapt."""
    commit(deep, {"specs/a/b/c/s.adapt": f'{SPEC}use "../../../../tmp/x.adapt"\n', "tmp/x.adapt": EVIL})
    monkeypatch.chdir(deep / "specs" / "a" / "b" / "c")
    outside = tmp_path / "t1" / "tmp" / "x.adapt"
    result = invoke(runner, "diff", "HEAD:./s.adapt", "s.adapt")
    assert result.exit_code == 0, result.output  # inside the repository: tmp/x.adapt at HEAD, read into the temp folder
    assert not outside.exists()
    commit(deep, {"s2.adapt": f'{SPEC}use "../../../../tmp/x.adapt"\n'})
    monkeypatch.chdir(deep)
    refused = invoke(runner, "diff", "HEAD:s2.adapt", "s2.adapt")
    assert refused.exit_code == 1 and "leaves the repository" in refused.stderr
    assert not outside.exists()


def test_symbolic_links_in_the_revision_do_not_lead_out(runner, deep, tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    commit(deep, {"s.adapt": f'{SPEC}use "link/evil.adapt"\n', "l.adapt": SPEC},
           links={"link": str(target), "root.adapt": str(target / "evil.adapt")})
    for operand in ("HEAD:s.adapt", "HEAD:root.adapt"):
        result = invoke(runner, "diff", operand, "l.adapt")
        assert result.exit_code in (1, 2), result.output
        assert TRACEBACK not in result.output
    assert list(target.iterdir()) == []


OPERANDS = {
    "output-option": "--output=FILE:x",
    "short-output": "-oFILE:x",
    "output-no-colon-after": "--output=FILE:",
    "outside-root": "HEAD:../outside.adapt",
    "absolute-path": "HEAD:/etc/passwd",
    "empty-path": "HEAD:",
    "nul-byte": "HEAD:s\x00.adapt",
}


@pytest.mark.parametrize("operand", list(OPERANDS.values()), ids=list(OPERANDS))
@pytest.mark.parametrize("side", ["old", "new"])
def test_operands_never_reach_git_as_options(runner, deep, operand, side):
    commit(deep, {"s.adapt": SPEC})
    args = ["diff", "--", operand, "s.adapt"] if side == "old" else ["diff", "--", "s.adapt", operand]
    result = invoke(runner, *args)  # a NUL reaches us in-process (a real argv cannot hold one)
    assert result.exit_code == 2, result.output
    assert TRACEBACK not in result.output
    assert not (deep / "FILE").exists()
    assert sorted(p.name for p in deep.iterdir()) == [".git", "s.adapt"]


def test_end_of_options_is_what_git_receives(runner, deep, monkeypatch):
    commit(deep, {"s.adapt": SPEC})
    seen = []
    real = subprocess.run

    def spy(cmd, *args, **kwargs):
        seen.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    assert invoke(runner, "diff", "HEAD:s.adapt", "s.adapt").exit_code == 0
    shows = [c for c in seen if "show" in c]
    assert shows and all(c[c.index("show") + 1] == "--end-of-options" for c in shows)
    assert subprocess.run(["git", "--version"], capture_output=True, text=True).stdout >= "git version 2.24"


# --- found in review: a folder named by `use`, and blobs past the spec file limit ----------------

@pytest.mark.parametrize("uses", [('"sub"', '"sub/x.adapt"'), ('"sub/x.adapt"', '"sub"')], ids=["dir-first", "file-first"])
def test_a_use_naming_a_folder_at_the_revision_is_a_located_error(runner, deep, uses):
    commit(deep, {"s.adapt": SPEC + "".join(f"use {u}\n" for u in uses), "sub/x.adapt": SPEC.replace("lora", "ia3", 1)})
    result = invoke(runner, "diff", "HEAD:s.adapt", "s.adapt")
    assert result.exit_code == 1, result.output
    assert "is a folder at HEAD, not a file" in result.output and TRACEBACK not in result.output


def test_a_blob_past_the_spec_file_limit_is_refused_before_it_is_read(runner, deep, monkeypatch):
    import adaptlang.limits as limits

    monkeypatch.setattr(limits, "MAX_SPEC_FILE_BYTES", 1000)
    commit(deep, {"s.adapt": SPEC + 'use "big.adapt"\n', "big.adapt": SPEC + "# " + "x" * 2000 + "\n"})
    result = invoke(runner, "diff", "HEAD:s.adapt", "s.adapt")
    assert result.exit_code == 1 and "past the limit of 1,000 bytes" in result.output, result.output
    result = invoke(runner, "diff", "HEAD:big.adapt", "s.adapt")
    assert result.exit_code == 2 and "(MAX_SPEC_FILE_BYTES)" in result.output, result.output
