"""Hugging Face hub ids (``org/name``) as model references, through ``huggingface_hub``'s cache.

``--model sentence-transformers/all-MiniLM-L6-v2`` names a model on the hub;
``org/name@revision`` pins a branch, tag or commit. What is fetched depends
on the command:

* planning (``compile``, ``check``, ``match``, ``inspect``, ``lock``) needs
  the structure only: ``config.json``, through ``hf_hub_download``;
* training and prediction need the weights and the tokenizer:
  ``snapshot_download`` of :data:`ALLOW_PATTERNS` only (configs, tokenizer
  files, ``*.safetensors``). Pickled weights (``*.bin``, ``*.pt``) are never
  downloaded or loaded (unpickling untrusted files can run code), so a
  repository with only those is refused. ``*.py`` (custom code) is never
  fetched either, and configs with ``auto_map`` stay refused by the loader.

Files live in ``huggingface_hub``'s own cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``); ``HF_HUB_OFFLINE=1``
uses that cache only. The environment is read on every call (not when
``huggingface_hub`` is imported), so a process may change it.

Without the network and without ``HF_HUB_OFFLINE``, ``hf_hub_download``
alone would retry a failed look-up five times with back-off (about 25
seconds) before it says so. One look-up without retries comes first
instead: a definite answer (no such repository, revision or ``config.json``)
is reported as such, and an unreachable hub falls back to the cache at once.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from adaptlang.errors import Diagnostic, UsageError

__all__ = ["ALLOW_PATTERNS", "NoSafeWeightsError", "hub_cache_dir", "local_model_dir", "parse_hub_ref"]

#: What ``snapshot_download`` fetches for weights=True: configs and tokenizer
#: files (``*.json``, ``*.txt`` vocabularies, ``*.model`` sentencepiece) and
#: safetensors weights. Never pickles, never code.
ALLOW_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")

#: Weight files adaptlang never loads: pickles (unpickling runs code).
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

#: A quick shape test before ``huggingface_hub``'s own validator is imported:
#: one ``/`` between two non-empty parts, then an optional ``@revision``.
_SHAPE = re.compile(r"^(?P<repo>[^/\\@\s:]+/[^/\\@\s:]+)(?:@(?P<revision>[^\s@\\]+))?$")

_TRUE = {"1", "on", "yes", "true"}


class NoSafeWeightsError(UsageError):
    """A hub model without ``*.safetensors`` weights (pickles only, or none cached)."""


def parse_hub_ref(ref: str) -> tuple[str, str | None] | None:
    """Splits ``org/name[@revision]`` into ``(repo id, revision or None)``; None when ``ref`` is no hub id.

    Follows the hub's repository-id rules (``huggingface_hub.utils.validate_repo_id``:
    letters, digits, ``-``, ``_``, ``.``; no leading or trailing ``-``/``.``; no
    ``--`` or ``..``; at most 96 characters a part). Only ``namespace/name``
    counts: a bare ``gpt2`` is a preset or an unknown name here, and
    ``./x/y``, ``~/x`` or ``a/b/c`` are paths.
    """
    match = _SHAPE.match(str(ref).strip())
    if match is None or match["repo"].startswith(("~", ".")):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return match["repo"], match["revision"]


def hub_cache_dir() -> Path:
    """The ``huggingface_hub`` cache folder, by its environment variables as they are now."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    folder = (os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
              or os.path.join(home, "hub"))
    return Path(os.path.expandvars(folder)).expanduser()


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as it is now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _timeout() -> float:
    """Seconds to wait for the hub's first answer (``HF_HUB_ETAG_TIMEOUT``, default 10)."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        return 10.0


def local_model_dir(ref: str, *, weights: bool = False) -> Path | None:
    """Returns a local folder holding the hub model ``ref``, or None when ``ref`` is no hub id.

    A reference naming an existing local path is no hub id (local folders
    win, as in :func:`adaptlang.plan.models.load_model`).

    Args:
        ref: A model reference as ``--model`` takes it: ``org/name`` or
            ``org/name@revision``.
        weights: False: only ``config.json`` is needed (compile, check);
            True: the weights and tokenizer files too (train, predict):
            the folder then holds ``config.json`` and ``*.safetensors``.

    Returns:
        The snapshot folder in the hub cache (``.../snapshots/<commit>``),
        or None.

    Raises:
        UsageError: ``ref`` looks like a hub id but cannot be fetched (offline
            with no cached copy, hub unreachable and nothing cached, unknown
            repository or revision, no ``config.json``); a revision that is
            no ref name (``..``); a cached copy that points outside the cache.
        NoSafeWeightsError: ``weights=True`` and the repository (or, offline,
            the cached copy) has no ``*.safetensors`` weights.
    """
    ref = str(ref).strip()
    parsed = parse_hub_ref(ref)
    if parsed is None or os.path.exists(os.path.expanduser(ref)):
        return None
    repo_id, revision = parsed
    if revision is not None and not _valid_revision(revision):
        raise UsageError(Diagnostic(f"revision '{revision}' is not a branch, tag or commit name", obj=ref,
                                    hint="a revision has no '..', no empty part and no part starting with '.'"))
    folder = _fetch(ref, repo_id, revision, weights)
    snapshots = hub_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if folder.resolve().parent != snapshots.resolve():  # a ref file naming a folder elsewhere
        raise _outside(ref, repo_id, str(folder.resolve()))
    if not (folder / "config.json").is_file():
        raise _missing(ref, repo_id, f"{folder} has no config.json", None)
    if weights:
        _check_weights(ref, repo_id, folder)
    return folder


def _valid_revision(revision: str) -> bool:
    """Git's rules for ref names, the part that keeps a revision a name (huggingface_hub joins it onto paths)."""
    parts = revision.split("/")
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in parts) \
        and ".." not in revision


def _outside(ref: str, repo_id: str, where: str) -> UsageError:
    """The error for a cached copy whose ref names a snapshot folder outside the cache (``where``)."""
    return UsageError(Diagnostic(
        f"the cached copy of the hub model '{repo_id}' points outside the hub cache ({where})", obj=ref,
        hint=f"the cache {hub_cache_dir()} is damaged or tampered with: delete its models--"
             f"{repo_id.replace('/', '--')} folder and fetch the model again"))


def _fetch(ref: str, repo_id: str, revision: str | None, weights: bool) -> Path:
    """Downloads (or, offline or unreachable, finds in the cache) what ``weights`` asks for."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache, endpoint = str(hub_cache_dir()), os.environ.get("HF_ENDPOINT") or None
    common = dict(revision=revision, cache_dir=cache, endpoint=endpoint)

    def fetch(local_only: bool) -> Path:
        if weights:
            return Path(snapshot_download(repo_id, allow_patterns=list(ALLOW_PATTERNS), local_files_only=local_only,
                                          etag_timeout=_timeout(), **common))
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=local_only,
                                    etag_timeout=_timeout(), **common)).parent

    unreachable = "HF_HUB_OFFLINE=1: cache only" if _offline() else _probe(ref, repo_id, revision, endpoint)
    if unreachable is None:
        try:
            return _answer(ref, repo_id, revision, lambda: fetch(False))
        except UsageError:
            raise
        except Exception as exc:  # the network went away after the look-up, a full disk, ...
            unreachable = "the download failed: " + _why(exc)
    try:
        return fetch(True)
    except LocalEntryNotFoundError:
        raise _missing(ref, repo_id, unreachable, revision) from None
    except ValueError as exc:  # huggingface_hub's own guard: a ref file naming a folder outside the cache
        raise _outside(ref, repo_id, f"huggingface_hub: {str(exc).splitlines()[0]}") from None


def _probe(ref: str, repo_id: str, revision: str | None, endpoint: str | None) -> str | None:
    """Asks the hub for ``config.json``'s metadata once, without retries.

    Returns:
        None when the hub answered; else why it could not be reached.

    Raises:
        UsageError: The hub answered that the repository, revision or
            ``config.json`` does not exist (or is private or gated).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint)
    try:
        _answer(ref, repo_id, revision, lambda: get_hf_file_metadata(url, timeout=_timeout()))
    except UsageError:
        raise
    except Exception as exc:  # connection refused, DNS, timeouts, 5xx, offline mode: all "unreachable"
        return "the hub cannot be reached: " + _why(exc)
    return None


def _answer(ref: str, repo_id: str, revision: str | None, call: Callable[[], Any]) -> Any:
    """Runs ``call``, turning the hub's definite answers into usage errors (others pass through)."""
    from huggingface_hub.errors import (DisabledRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return call()
    except RevisionNotFoundError:
        raise UsageError(Diagnostic(f"the hub model '{repo_id}' has no revision '{revision}'", obj=ref,
                                    hint="name a branch, tag or commit after '@'")) from None
    except RepositoryNotFoundError:
        raise UsageError(Diagnostic(
            f"no model directory '{ref}', and no hub model '{repo_id}' (not found, or private or gated)",
            obj=ref, hint="check the spelling; for a private or gated model log in (`hf auth login`) "
                          "or set HF_TOKEN")) from None
    except DisabledRepoError:
        raise UsageError(Diagnostic(f"the hub model '{repo_id}' is disabled", obj=ref)) from None
    except RemoteEntryNotFoundError:
        raise UsageError(Diagnostic(f"the hub model '{repo_id}' has no config.json", obj=ref,
                                    hint="adaptlang reads transformers models (a config.json at the top)")) from None


def _why(exc: BaseException) -> str:
    """A one-line reason from a network error (the innermost cause says most)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _missing(ref: str, repo_id: str, why: str | None, revision: str | None) -> UsageError:
    """The error for a hub model that is neither reachable nor in the cache (``why``: the hub's side)."""
    cache = hub_cache_dir()
    what = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    if _offline():
        hint = ("HF_HUB_OFFLINE=1 allows the cache only: fetch it once with the network on, "
                "or set HF_HUB_CACHE (or HF_HOME) to a cache that holds it")
    else:
        hint = "check the network, or set HF_HUB_OFFLINE=1 and HF_HUB_CACHE to a cache that holds it"
    return UsageError(Diagnostic(
        f"no model directory '{ref}', and the hub model {what} is not in the cache {cache} ({why})",
        obj=ref, hint=hint))


def _check_weights(ref: str, repo_id: str, folder: Path) -> None:
    """Refuses a snapshot without (complete) safetensors weights."""
    safe = sorted(p.name for p in folder.glob("*.safetensors"))
    if not safe:
        pickles = sorted({p.name for pattern in _PICKLES for p in folder.glob(pattern)})
        found = f" (the cached copy has {', '.join(pickles)})" if pickles else ""
        raise NoSafeWeightsError(Diagnostic(
            f"the hub model '{repo_id}' has no *.safetensors weights{found}", obj=ref,
            hint="adaptlang loads safetensors only, never pickled *.bin/*.pt weights (unpickling can run "
                 "code); use a repository with safetensors weights, or convert it and use a local folder"
                 + ("" if not _offline() else "; offline, only what is cached counts")))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from adaptlang.limits import MAX_CONFIG_BYTES
        from adaptlang.textfile import FileProblem, read_text_file

        try:
            text = read_text_file(index, MAX_CONFIG_BYTES, what="a weight index (MAX_CONFIG_BYTES)")
            shards = set(json.loads(text)["weight_map"].values())
        except FileProblem as problem:
            raise UsageError(Diagnostic(f"cannot read {index}: {problem.message}", obj=ref)) from None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise UsageError(Diagnostic(f"cannot read {index}: {type(exc).__name__}", obj=ref)) from None
        absent = sorted(name for name in shards if not (folder / name).is_file())
        if absent:
            raise NoSafeWeightsError(Diagnostic(
                f"the cached copy of the hub model '{repo_id}' lacks {len(absent)} weight shard(s): "
                + ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else ""), obj=ref,
                hint="fetch it again with the network on (unset HF_HUB_OFFLINE)"))
