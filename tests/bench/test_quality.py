"""``python -m bench.quality --quick``: every method applies to the real BERT, trains and reports.

The quick mode's accuracies mean nothing (two steps on 32 words); what is
checked is that each method runs on all-MiniLM-L6-v2 under the Trainer and
trains exactly the parameters it should. The counts are computed by hand from
the model's shape (6 layers, hidden 384, MLP 1536, 2 labels):

* head: the classifier, 384 * 2 + 2 = 770 (every method trains it too);
* LoRA q,v r=8: 6 layers * 2 sites * 8 * (384 + 384) = 73,728;
* Houlsby adapters size 32: 12 sites * (2 * 384 * 32 + 32 + 384) = 299,904;
* BitFit: the embeddings' LayerNorm bias 384, per layer q,k,v,o 4 * 384,
  2 LayerNorms 2 * 384, MLP 1536 + 384 (6 * 4,224 = 25,344), the pooler 384: 26,112;
* (IA)^3: 6 * (key 384 + value 384 + the MLP's inner 1536) = 13,824;
* prompt: 20 tokens * 384 = 7,680.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAD = 770
EXPECTED = {"head": HEAD, "lora": 73_728 + HEAD, "peft-lora": 73_728 + HEAD, "adapter": 299_904 + HEAD,
            "bitfit": 26_112 + HEAD, "ia3": 13_824 + HEAD, "prompt": 7_680 + HEAD}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "bench.quality", "--quick", "--threads", "1", "--out", str(out),
                           "--tag", "t"], cwd=out, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return json.loads((out / "quality-t.json").read_text()), (out / "quality-t.md").read_text(), done.stdout


def test_every_method_trains_what_it_should(quick):
    data, _, _ = quick
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["head", "full", "lora", "peft-lora", "adapter", "bitfit", "ia3", "prompt"]
    total = rows["head"]["total"]
    assert all(r["total"] == total for r in rows.values())  # the same base model each time
    assert rows["full"]["trainable"] == total  # every parameter, the new head included
    for key, count in EXPECTED.items():
        assert rows[key]["trainable"] == count, key
        assert rows[key]["percent"] == pytest.approx(100 * count / total)


def test_every_method_ran_the_same_budget(quick):
    data, _, _ = quick
    env = data["environment"]
    assert (env["train_rows"], env["test_rows"], env["max_steps"], env["seed"]) == (32, 32, 2, 0)
    for row in data["rows"]:
        assert row["steps"] == 2, row["method"]
        assert row["train_s"] > 0 and 0 < row["train_loss"] < 5
        assert 0 <= row["accuracy"] <= 1 and (row["accuracy"] * 32) == pytest.approx(round(row["accuracy"] * 32))
    assert "accuracy_before" in data["rows"][0]


def test_table_lists_every_method(quick):
    data, markdown, stdout = quick
    assert markdown in stdout
    for row in data["rows"]:
        assert f"| {row['label']} | {row['trainable']:,} |" in markdown


def test_unknown_method_is_refused():
    from bench.quality import main

    with pytest.raises(SystemExit, match="unknown method.*nope.*choose from head"):
        main(["--methods", "lora,nope"])


def test_bad_learning_rate_is_refused():
    from bench.quality import main

    with pytest.raises(SystemExit, match="--lr lora=fast: expected METHOD=RATE"):
        main(["--lr", "lora=fast"])
    with pytest.raises(SystemExit, match="--lr lora=0: expected METHOD=RATE"):
        main(["--lr", "lora=0"])
