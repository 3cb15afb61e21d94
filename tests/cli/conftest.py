"""Shared fixtures for the ``adaptc`` tests: a CLI runner and small specs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptlang.cli.main import app

REPO = Path(__file__).resolve().parents[2]
MULTITASK = REPO / "specs" / "multitask.adapt"

#: A small valid spec (Llama roles and paths).
SMALL_SPEC = """\
adaptlang 1
model llama

let r = 8

lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank r
}

task main = attn
"""

#: The same spec, badly laid out (same meaning).
UGLY_SPEC = """\
adaptlang 1
model   llama
let r=8
lora attn{
  on layers[*].self_attn.{q_proj,v_proj}
      rank r
}
task main=attn
"""

#: A spec with an unknown property on line 4, column 5.
BAD_SPEC = """\
adaptlang 1
lora attn {
    on   q_proj
    rnak 8
}
"""

TRACEBACK = "Traceback (most recent call last)"
LOCATION = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+): error: ", re.M)


@pytest.fixture()
def runner() -> CliRunner:
    """A typer runner (stdout and stderr kept apart)."""
    return CliRunner()


def git(repo: Path, *args: str) -> str:
    """Runs git in ``repo`` (with a throwaway identity) and returns stdout."""
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          capture_output=True, text=True, check=True)
    return done.stdout


def invoke(runner: CliRunner, *args: str, env: dict | None = None):
    """Runs ``adaptc ARGS`` in-process and returns the click Result."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def run_adaptc(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the installed ``adaptc`` script (the console entry point) as a real process."""
    full_env = dict(os.environ)
    full_env.pop("ADAPTLANG_DEBUG", None)
    full_env.update(env or {})
    script = Path(sys.executable).parent / "adaptc"
    if script.is_file():
        cmd = [str(script), *[str(a) for a in args]]
    else:  # not installed next to this interpreter: the same entry point, by hand
        cmd = [sys.executable, "-c", "from adaptlang.cli.main import run; run()", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or REPO, env=full_env, timeout=300)


def write_spec(folder: Path, name: str, text: str) -> Path:
    """Writes a spec file and returns its path."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_caret_under(stderr: str, column: int) -> None:
    """Checks that the caret line after the first location starts under ``column``."""
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if LOCATION.match(line))
    caret = lines[first + 2]
    assert caret.strip() and set(caret.strip()) == {"^"}, stderr
    assert caret.index("^") == 4 + column - 1, stderr


@pytest.fixture(scope="module")
def peft_folder(tmp_path_factory):
    """A LoRA adapter folder saved by PEFT for tiny Llama (copy it before changing it)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from adaptlang.plan.models import load_model

    model = get_peft_model(load_model("tiny-llama", device="cpu")[0], LoraConfig(r=2, target_modules=["q_proj"]))
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(folder))
    return folder
