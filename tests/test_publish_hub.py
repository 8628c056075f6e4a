"""Publishing to `hf://datasets/owner/name`, against a LOCAL FAKE of the Hub's HTTP API.

No real Hub can be reached from here, so `FakeHub` below is a loopback HTTP
server that answers the few endpoints `huggingface_hub` calls for a publish:
repo creation, README YAML validation, preupload (it answers "regular" for
every file, so content travels base64 inside the commit instead of through
LFS/Xet), the NDJSON commit, and `resolve` (HEAD/GET) for reading
`manifest.json` back. Everything up to and including the HTTP requests is the
real client code; what the fake does not model is LFS/Xet storage, auth and
the Hub's own YAML checks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import yaml

from factory.errors import UserError
from factory.pipeline import open_run
from factory.publish import publish
from tests.support.loopback import Served
from tests.support.finished_run import finished_run, rewrite_qa


class FakeHub(Served):
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []
        self.requests: list[str] = []
        self.token = "hf_fake_token"
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data: dict) -> None:
                self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self._json(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def do_POST(self):
                hub.requests.append(f"POST {self.path}")
                if not self._authorized():
                    return None
                parts = self.path.split("?")[0].strip("/").split("/")
                body = self._body()
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    hub.repos.setdefault(repo, {})
                    return self._json(200, {"url": f"{hub.url}/datasets/{repo}"})
                if parts[:2] == ["api", "validate-yaml"]:
                    return self._json(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "datasets"] and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                if parts[:2] == ["api", "datasets"] and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    if repo not in hub.repos:
                        return self._reply(404, b"not found", {"X-Error-Code": "RepoNotFound"})
                    ops = [json.loads(line) for line in body.splitlines() if line.strip()]
                    files = dict(hub.repos[repo])  # applied all at once: a commit is atomic
                    for op in ops[1:]:
                        if op["key"] == "file":
                            files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                        elif op["key"] == "deletedFile":
                            del files[op["value"]["path"]]
                        else:
                            return self._reply(400, f"unsupported op {op['key']}".encode())
                    hub.repos[repo] = files
                    oid = hashlib.sha1(json.dumps(sorted(files)).encode() + str(len(hub.commits)).encode()).hexdigest()
                    hub.commits.append({"repo": repo, "summary": ops[0]["value"]["summary"], "ops": ops[1:]})
                    return self._json(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}",
                                            "commitOid": oid, "pullRequestUrl": None})
                return self._reply(404, b"unknown endpoint")

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                hub.requests.append(f"{self.command} {self.path}")
                if not self._authorized():
                    return None
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "datasets" and parts[3] == "resolve":
                    repo, path = f"{parts[1]}/{parts[2]}", "/".join(parts[5:])
                    if repo not in hub.repos:
                        return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"})
                    if path not in hub.repos[repo]:
                        return self._reply(404, b"", {"X-Error-Code": "EntryNotFound"})
                    data = hub.repos[repo][path]
                    return self._reply(200, data, {"ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                                   "X-Repo-Commit": "0" * 40})
                return self._reply(404, b"unknown endpoint")

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", fake.token)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield fake


def test_publish_to_hub_is_one_commit_per_version(tmp_path, journal, hub):
    run = finished_run(tmp_path / "run", journal)
    dest = "hf://datasets/me/journal-memory"
    first = publish(open_run(run.root), dest)
    assert first.changed and len(hub.commits) == 1
    files = hub.repos["me/journal-memory"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["version"] == first.version
    assert {f["path"] for f in manifest["files"]} | {"README.md", "manifest.json"} == set(files)
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    qa = next(c for c in meta["configs"] if c["config_name"] == "qa")
    train = next(d["path"] for d in qa["data_files"] if d["split"] == "train")
    assert sum(pq.read_table(io.BytesIO(files[p])).num_rows for p in train) == 23
    assert 'load_dataset("me/journal-memory", "qa")' in files["README.md"].decode()

    # Same run again: the manifest is read back from the fake and nothing is committed.
    assert not publish(open_run(run.root), dest).changed
    assert len(hub.commits) == 1

    # New qa: one commit adds the new qa shards, deletes the old ones, leaves the graph shards alone.
    rewrite_qa(run, "v2", n_train=8)
    assert publish(open_run(run.root), dest).changed
    ops = hub.commits[-1]["ops"]
    added = {o["value"]["path"] for o in ops if o["key"] == "file"}
    deleted = {o["value"]["path"] for o in ops if o["key"] == "deletedFile"}
    assert all(p.startswith("qa/") for p in added - {"README.md", "manifest.json"})
    assert deleted and all(p.startswith("qa/") for p in deleted)
    assert set(hub.repos["me/journal-memory"]) == {
        f["path"] for f in json.loads(hub.repos["me/journal-memory"]["manifest.json"])["files"]
    } | {"README.md", "manifest.json"}


def test_hub_errors_are_one_line(tmp_path, journal, hub):
    run = finished_run(tmp_path / "run", journal)
    with pytest.raises(UserError, match="expected hf://datasets/<owner>/<name>"):
        publish(open_run(run.root), "hf://models/me/x")
    hub.token = "hf_another_token"
    with pytest.raises(UserError, match="hf://datasets/me/x: .*HTTP 401: not allowed; check HF_TOKEN") as err:
        publish(open_run(run.root), "hf://datasets/me/x")
    assert "\n" not in str(err.value) and not hub.commits
