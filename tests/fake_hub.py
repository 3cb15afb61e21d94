"""A tiny local stand-in for the Hugging Face hub's HTTP API (no network needed).

Serves what ``hf_hub_download`` and ``snapshot_download`` ask for, with the
headers and error codes the real hub sends (huggingface_hub turns
``X-Error-Code`` into its exception types):

* ``HEAD|GET /<org>/<name>/resolve/<revision>/<file>``: ``X-Repo-Commit``,
  ``ETag`` (the blob id), ``Content-Length``; 404 with ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``;
* ``GET /api/models/<org>/<name>/revision/<revision>``: the repo info (``sha``);
* ``GET /api/models/<org>/<name>/tree/<commit>``: the file listing.

Every request is logged in :attr:`FakeHub.requests`, so a test can show a
file was never fetched. Point ``HF_ENDPOINT`` at :attr:`FakeHub.url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.hub_cache import LFS_THRESHOLD, blob_id

__all__ = ["FakeHub"]


class FakeHub:
    """A served set of repositories, one commit each (``main`` points at it)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        """The endpoint (``http://127.0.0.1:<port>``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Serves ``repo_id`` with ``files`` (replacing any earlier commit); returns the commit hash."""
        commit = hashlib.sha1(json.dumps([repo_id, sorted((n, blob_id(d)) for n, d in files.items())])
                              .encode("utf-8")).hexdigest()
        self.repos[repo_id] = {"commit": commit, "files": dict(files)}
        return commit

    def fetched(self) -> list[str]:
        """Paths of the files downloaded (GET of ``resolve``), in order."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                self._api(parts[2] + "/" + parts[3], parts[4], parts[5])
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
            else:
                self._reply(404, {"X-Error-Code": "RepoNotFound"})

        def _repo(self, repo_id: str, revision: str) -> dict[str, Any] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._reply(401, {"X-Error-Code": "RepoNotFound",
                                  "X-Error-Message": "Repository not found"})
                return None
            if revision not in ("main", repo["commit"]):
                self._reply(404, {"X-Error-Code": "RevisionNotFound"})
                return None
            return repo

        def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            data = repo["files"].get(name)
            if data is None:
                self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["commit"]})
                return
            self._reply(200, {"X-Repo-Commit": repo["commit"], "ETag": f'"{blob_id(data)}"',
                              "Content-Length": str(len(data))}, data if body else None)

        def _api(self, repo_id: str, kind: str, revision: str) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            files = repo["files"]
            if kind == "revision":
                info = {"id": repo_id, "sha": repo["commit"], "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(files)]}
                payload = json.dumps(info).encode("utf-8")
            else:
                payload = json.dumps([_tree_entry(name, data) for name, data in sorted(files.items())]).encode()
            self._reply(200, {"Content-Type": "application/json", "Content-Length": str(len(payload))}, payload)

        def _reply(self, status: int, headers: dict[str, str], data: bytes | None = None) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", "0")
            self.end_headers()
            if data is not None and self.command == "GET":
                self.wfile.write(data)

    return Handler


def _tree_entry(name: str, data: bytes) -> dict[str, Any]:
    """One file of a tree listing (``/api/models/.../tree/...``)."""
    entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": blob_id(data)}
    if len(data) >= LFS_THRESHOLD:
        entry["lfs"] = {"oid": blob_id(data), "size": len(data), "pointerSize": 134}
    return entry
