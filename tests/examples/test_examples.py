"""The scripts in ``examples/`` run to the end, each in a fresh interpreter, and say what they show.

Each runs with a small ``--steps`` so the whole file stays within seconds;
the checks read the lines the scripts print (the claims a reader sees).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Runs ``examples/name`` with this interpreter from ``cwd``; returns stdout (fails on a non-zero exit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def test_every_example_is_covered():
    # vader_data.py has its own file: tests/examples/test_vader_data.py.
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["stack_tasks.py", "switch_tasks.py",
                                                             "train_fsdp.py", "train_one_task.py",
                                                             "vader_data.py"]


def test_train_one_task(tmp_path):
    # From another directory: the script finds specs/ relative to itself.
    out = run_example("train_one_task.py", "--steps", "25", cwd=tmp_path)
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert "applied lora.adapt: tasks ['default'], training 1,792 parameters" in out
    base = re.search(r"base model: next-token accuracy (\d+)%", out).group(1)
    restored = re.search(r"after remove\(\): accuracy (\d+)%", out).group(1)
    assert base == restored


def test_switch_tasks(tmp_path):
    out = run_example("switch_tasks.py", "--steps", "40", cwd=tmp_path)
    answers = re.findall(r"active: (\w+)\s+\[2, 3, 4, 5\] -> (\d+)", out)
    assert [task for task, _ in answers] == ["count_up", "count_down", "count_up"]
    # Switching changes the output, and leaving the `with` block restores the first task's.
    assert answers[0][1] != answers[1][1] and answers[2][1] == answers[0][1]


def test_stack_tasks(tmp_path):
    out = run_example("stack_tasks.py", "--steps", "40", cwd=tmp_path)
    assert "'one' unchanged by the second run: True" in out
    rows = {m.group(1): (int(m.group(2).replace(",", "")), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\w+)\s+([\d,]+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", out, re.M)}
    assert list(rows) == ["plus_one", "plus_two", "blend"]
    # frozen(one) + two trains only two; the blend trains both.
    assert rows["plus_two"][0] == rows["plus_one"][0] and rows["blend"][0] == 2 * rows["plus_one"][0]
    # Each trained task is better at its own counting than at the other's.
    assert rows["plus_one"][1] < rows["plus_one"][2] and rows["plus_two"][2] < rows["plus_two"][1]


def test_train_fsdp(tmp_path):
    # Two processes, as the README's command (torchrun is torch.distributed.run); --standalone: a free port.
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(EXAMPLES / "train_fsdp.py"), "--steps", "10", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"train_fsdp.py exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    out = done.stdout
    assert "every base weight loaded: True" in out
    shares = re.findall(r"rank (\d) holds ([\d,]+) of the base's ([\d,]+) bytes \((\d+\.\d)%\)", out)
    assert [r for r, *_ in shares] == ["0", "1"] and all(pct == "50.0" for *_, pct in shares)
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    difference = float(re.search(r"max \|difference\| from the sharded model (\S+)", out).group(1))
    assert difference <= 1e-6
    assert (tmp_path / "run" / "bundles" / "default.safetensors").is_file()  # --out keeps the files


@pytest.mark.parametrize("name", ["train_one_task.py", "switch_tasks.py", "stack_tasks.py", "train_fsdp.py"])
def test_examples_use_only_the_public_api(name):
    source = (EXAMPLES / name).read_text()
    imports = set(re.findall(r"^(?:from|import) (adaptlang[\w.]*)", source, re.M))
    assert imports == {"adaptlang"}
