"""``adaptc diff`` / ``lock`` and the bundle textconv driver, inside a temporary git repository."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

import adaptlang

from .conftest import MULTITASK, REPO, TRACEBACK, git, invoke


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository holding specs/multitask.adapt and specs/common.adapt, committed; cwd is its root."""
    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "common.adapt").write_text(
        "adaptlang 1\nlora shared {\n    on   layers[*].self_attn.o_proj\n    rank 2\n}\n")
    (root / "specs" / "multitask.adapt").write_text(
        MULTITASK.read_text() + '\nuse "common.adapt"\ntask extra = shared\n')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "specs")
    monkeypatch.chdir(root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_diff_against_a_revision_shows_semantic_changes(runner, repo):
    spec = repo / "specs" / "multitask.adapt"
    edit(spec, "{q_proj, v_proj}", "{q_proj, k_proj, v_proj}")
    edit(spec, "size    64", "size    32")
    result = invoke(runner, "diff", "HEAD:specs/multitask.adapt", "specs/multitask.adapt", "--model", "tiny-llama")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("--- HEAD:specs/multitask.adapt\n+++ specs/multitask.adapt\nspec:\n")
    assert "  ~ delta attn changed\n      on: layers[*].self_attn.{q_proj, v_proj} -> " \
           "layers[*].self_attn.{q_proj, k_proj, v_proj}\n" in out
    assert "  ~ delta bottleneck changed\n      size: 64 -> 32\n" in out
    # tiny-llama: k_proj is 32 -> 16 (2 KV heads of 8); rank 8 -> 8 * 48 = 384 per layer, 2 layers.
    assert "      4 -> 6 sites, 1,792 -> 2,560 parameters\n      + model.layers.0.self_attn.k_proj\n" in out
    # sentiment = attn + bottleneck; adapter 2*dim*size + size + dim per layer: 2 * (2*32*64 + 64 + 32)
    # = 8,384 before, 2 * (2*32*32 + 32 + 32) = 4,224 after.
    assert "  ~ task sentiment changed\n      trainable 10,176 -> 6,784, bundle 10,176 -> 6,784\n" in out
    assert invoke(runner, "diff", "HEAD:specs/multitask.adapt", "specs/multitask.adapt",
                  "--exit-code").exit_code == 1


def test_formatting_and_comments_are_no_semantic_change(runner, repo):
    assert invoke(runner, "fmt", "specs/multitask.adapt").exit_code == 0
    edit(repo / "specs" / "multitask.adapt", "lora attn {", "# attention only\nlora attn {")
    result = invoke(runner, "diff", "HEAD:specs/multitask.adapt", "specs/multitask.adapt", "--exit-code")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("no semantic changes\n")


def test_files_a_spec_uses_are_read_at_the_same_revision(runner, repo):
    edit(repo / "specs" / "common.adapt", "rank 2", "rank 4")
    git(repo, "commit", "-qam", "rank 4")
    result = invoke(runner, "diff", "HEAD~1:specs/multitask.adapt", "HEAD:specs/multitask.adapt")
    assert "  ~ delta shared changed\n      rank: 2 -> 4\n" in result.stdout, result.output
    # REV:./path is relative to the working directory, as in git.
    (repo / "specs" / "sub").mkdir()
    import os

    os.chdir(repo / "specs")
    rel = invoke(runner, "diff", "HEAD~1:./multitask.adapt", "HEAD:./multitask.adapt")
    assert rel.exit_code == 0 and "rank: 2 -> 4" in rel.stdout


def test_git_errors_are_usage_errors(runner, repo, tmp_path, monkeypatch):
    bad_rev = invoke(runner, "diff", "nosuchrev:specs/multitask.adapt", "specs/multitask.adapt")
    assert bad_rev.exit_code == 2 and "cannot read nosuchrev:specs/multitask.adapt from git" in bad_rev.stderr
    missing = invoke(runner, "diff", "HEAD:specs/nope.adapt", "specs/multitask.adapt")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    result = invoke(runner, "diff", "HEAD:x.adapt", MULTITASK)
    assert result.exit_code == 2 and "not inside a git repository" in result.stderr
    assert TRACEBACK not in result.output


def test_lock_and_check_through_commits(runner, repo):
    result = invoke(runner, "lock", "specs/multitask.adapt", "--model", "tiny-llama")
    assert result.exit_code == 0, result.output
    git(repo, "add", "adapt.lock")
    git(repo, "commit", "-qm", "lock")
    assert invoke(runner, "lock", "--check").exit_code == 0
    edit(repo / "specs" / "multitask.adapt", "rank    16", "rank    4")
    edit(repo / "specs" / "multitask.adapt", "rank    32 for", "rank    4 for")
    drift = invoke(runner, "lock", "--check")
    assert drift.exit_code == 1
    assert "specs/multitask.adapt (model tiny-llama): error: the plan changed" in drift.stderr
    assert "note: the spec changed (its sources, or a file it uses)" in drift.stderr
    # qa = attn (1,792) + mlp at rank 4: 2 layers x 3 projections x 4 * (32 + 64) = 2,304.
    assert "note: task 'qa': trainable_params 20,224 -> 4,096, bundle_params 20,224 -> 4,096" in drift.stderr
    git(repo, "checkout", "-q", "specs/multitask.adapt")
    assert invoke(runner, "lock", "--check").exit_code == 0
    # Re-locking the same inputs rewrites the same bytes: nothing to commit.
    assert invoke(runner, "lock", "specs/multitask.adapt", "--model", "tiny-llama").exit_code == 0
    assert git(repo, "status", "--porcelain") == ""


def test_lock_usage_errors(runner, repo):
    assert invoke(runner, "lock", "--check").exit_code == 2  # no adapt.lock yet
    assert invoke(runner, "lock").exit_code == 2
    assert invoke(runner, "lock", "specs/missing.adapt").exit_code == 2


def test_git_diff_shows_bundle_manifests_through_textconv(repo):
    adaptc = Path(sys.executable).parent / "adaptc"
    shutil.copy(REPO / ".gitattributes", repo / ".gitattributes")
    git(repo, "config", "diff.adaptbundle.textconv", f"{adaptc} show")
    torch.manual_seed(0)
    from adaptlang.plan.models import load_model

    spec = "adaptlang 1\nlora attn {\n    on   layers[*].self_attn.q_proj\n    rank 2\n}\ntask t = attn\n"
    adapted = adaptlang.apply(load_model("tiny-llama", device="cpu")[0], spec)
    adapted.save(repo / "bundles")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "bundle")
    with torch.no_grad():
        next(iter(adapted.delta_parameters("attn").values())).add_(1.0)
    adapted.save(repo / "bundles")
    diff = git(repo, "diff", "bundles/t.safetensors")
    assert "Binary files" not in diff
    changed = [line for line in diff.splitlines() if line.startswith(("-  ", "+  "))]
    assert len(changed) == 2 and all("attn/model.layers.0.self_attn.q_proj/lora_A" in line for line in changed)


def test_pre_commit_hooks_offer_fmt_and_lock_checks():
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert hooks["adaptc-fmt"]["entry"] == "adaptc fmt --check"
    assert hooks["adaptc-lock"]["entry"] == "adaptc lock --check"
    assert hooks["adaptc-lock"]["pass_filenames"] is False
    assert "diff=adaptbundle" in (REPO / ".gitattributes").read_text()
