"""A small, faithful Hugging Face Hub API server for the push/pull tests (stdlib only).

Run as ``python tests/hub_server.py ROOT TOKEN``: it listens on a free port of 127.0.0.1,
prints ``PORT <n>`` and serves until killed. Repositories live under ``ROOT`` as JSON
(``repo.json`` with refs, ``commits/<sha>.json`` with the file tree) plus content-addressed
``objects/<sha256>``, so a test can see exactly what was written.

Implemented as the public Hub does, to the extent ``huggingface_hub`` relies on it:
``POST /api/repos/create``; ``POST /api/validate-yaml`` (README metadata);
``POST /api/models/{repo}/branch/{b}`` and ``/tag/{rev}``;
``POST /api/models/{repo}/preupload/{rev}`` (LFS for safetensors, binaries and files over
10 MB); the git-LFS batch API ``POST /{repo}.git/info/lfs/objects/batch`` with ``basic``
upload to a one-time URL (the content's SHA-256 is checked) and ``verify``; the NDJSON
``POST /api/models/{repo}/commit/{rev}`` (``file``, ``lfsFile``, ``deletedFile``, with
``parentCommit`` checking); ``GET /api/models/{repo}[/revision/{rev}]``, ``/refs`` and
``/tree/{rev}``; ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``,
``ETag`` (git blob SHA-1) or, for LFS files, a redirect carrying ``X-Linked-Etag`` (SHA-256)
and ``X-Linked-Size``; byte ranges. Every write needs ``Authorization: Bearer TOKEN`` and
private repositories need it to read; errors carry the Hub's ``X-Error-Code``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LOCK = threading.Lock()
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
LFS_THRESHOLD = 10 * 1024 * 1024


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Store:
    """Repositories on disk under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads: dict[str, tuple[str, str]] = {}  # secret -> (repo_id, oid)

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id

    def repo(self, repo_id: str) -> dict:
        path = self.repo_dir(repo_id) / "repo.json"
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def save_repo(self, repo_id: str, repo: dict) -> None:
        path = self.repo_dir(repo_id) / "repo.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repo, indent=1))

    def object_path(self, repo_id: str, oid: str) -> Path:
        return self.repo_dir(repo_id) / "objects" / oid

    def put_object(self, repo_id: str, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        path = self.object_path(repo_id, oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return oid

    def commit(self, repo_id: str, sha: str) -> dict:
        path = self.repo_dir(repo_id) / "commits" / f"{sha}.json"
        return json.loads(path.read_text())

    def resolve(self, repo_id: str, revision: str) -> str:
        repo = self.repo(repo_id)
        for kind in ("branches", "tags"):
            if revision in repo[kind]:
                return repo[kind][revision]
        if (
            re.fullmatch(r"[0-9a-f]{40}", revision)
            and (self.repo_dir(repo_id) / "commits" / f"{revision}.json").is_file()
        ):
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def new_commit(self, repo_id: str, parent: str | None, tree: dict, message: str) -> str:
        record = {"parent": parent, "tree": tree, "message": message, "time": time.time()}
        sha = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        path = self.repo_dir(repo_id) / "commits" / f"{sha}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
        return sha

    def file_entry(self, repo_id: str, data: bytes, lfs: bool) -> dict:
        oid = self.put_object(repo_id, data)
        return {"sha256": oid, "size": len(data), "blob_id": git_blob_sha1(data), "lfs": lfs}


class Handler(BaseHTTPRequestHandler):
    store: Store
    token: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    # --- plumbing ---------------------------------------------------------------------
    def base(self) -> str:
        return f"http://{self.headers['Host']}"

    def storage(self) -> str:
        """The LFS storage host: this server by another name, as the Hub's CDN is another
        host (clients then take the file metadata from the redirect itself)."""
        return f"http://localhost:{self.server.server_address[1]}"

    def authorised(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.token}"

    def require_token(self) -> None:
        if not self.authorised():
            raise HubError(401, "Invalid credentials in Authorization header")

    def readable(self, repo_id: str) -> dict:
        repo = self.store.repo(repo_id)
        if repo["private"] and not self.authorised():
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def send(self, status: int, payload=None, headers: dict | None = None, data=None) -> None:
        if data is None:
            data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def dispatch(self, routes) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        try:
            for method, pattern, handler in routes:
                match = re.fullmatch(pattern, url.path)
                if method == self.command and match:
                    with LOCK:
                        handler(self, *[unquote(g) for g in match.groups()])
                    return
            raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as error:
            headers = {"X-Error-Code": error.code} if error.code else {}
            headers["X-Error-Message"] = error.message
            self.send(error.status, {"error": error.message, **error.extra}, headers)

    def do_GET(self) -> None:
        self.dispatch(ROUTES)

    do_HEAD = do_POST = do_PUT = do_GET

    # --- repositories and refs --------------------------------------------------------
    def create_repo(self) -> None:
        self.require_token()
        request = json.loads(self.body())
        repo_id = f"{request['organization']}/{request['name']}"
        url = f"{self.base()}/{repo_id}"
        if (self.store.repo_dir(repo_id) / "repo.json").is_file():
            raise HubError(409, "You already created this model repo", "RepoExists", url=url)
        tree = {".gitattributes": self.store.file_entry(repo_id, GITATTRIBUTES, False)}
        sha = self.store.new_commit(repo_id, None, tree, "initial commit")
        private = request.get("visibility") == "private" or bool(request.get("private"))
        repo = {"private": private, "branches": {"main": sha}, "tags": {}}
        self.store.save_repo(repo_id, repo)
        self.send(200, {"url": url, "name": repo_id, "id": repo_id})

    def create_branch(self, repo_id: str, branch: str) -> None:
        self.require_token()
        repo = self.store.repo(repo_id)
        start = json.loads(self.body() or b"{}").get("startingPoint") or "main"
        if branch in repo["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo["branches"][branch] = self.store.resolve(repo_id, start)
        self.store.save_repo(repo_id, repo)
        self.send(200, {})

    def create_tag(self, repo_id: str, revision: str) -> None:
        self.require_token()
        repo = self.store.repo(repo_id)
        tag = json.loads(self.body())["tag"]
        if tag in repo["tags"]:
            raise HubError(409, f"Tag already exists: {tag}")
        repo["tags"][tag] = self.store.resolve(repo_id, revision)
        self.store.save_repo(repo_id, repo)
        self.send(200, {})

    def refs(self, repo_id: str) -> None:
        repo = self.readable(repo_id)

        def listing(kind: str, prefix: str) -> list:
            items = sorted(repo[kind].items())
            return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": c} for n, c in items]

        self.send(
            200,
            {
                "branches": listing("branches", "refs/heads/"),
                "tags": listing("tags", "refs/tags/"),
                "converts": [],
            },
        )

    def info(self, repo_id: str, revision: str = "main") -> None:
        repo = self.readable(repo_id)
        sha = self.store.resolve(repo_id, revision)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        tree = self.store.commit(repo_id, sha)["tree"]
        self.send(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": stamp,
                "createdAt": stamp,
                "siblings": [{"rfilename": path} for path in sorted(tree)],
            },
        )

    def tree(self, repo_id: str, revision: str, prefix: str = "") -> None:
        self.readable(repo_id)
        sha = self.store.resolve(repo_id, revision)
        entries = []
        for path, entry in sorted(self.store.commit(repo_id, sha)["tree"].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            item = {"type": "file", "oid": entry["blob_id"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
            entries.append(item)
        self.send(200, entries)

    # --- uploads -------------------------------------------------------------------------
    def preupload(self, repo_id: str, revision: str) -> None:
        self.require_token()
        self.store.repo(repo_id)
        self.store.resolve(repo_id, revision)
        files = []
        for f in json.loads(self.body())["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(".safetensors") or f["size"] > LFS_THRESHOLD
            lfs = lfs or b"\0" in sample
            mode = "lfs" if lfs else "regular"
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False})
        self.send(200, {"files": files, "commitOid": self.store.resolve(repo_id, revision)})

    def lfs_batch(self, repo_id: str) -> None:
        self.require_token()
        self.store.repo(repo_id)
        request = json.loads(self.body())
        if request.get("operation") != "upload" or "basic" not in request.get("transfers", []):
            raise HubError(400, "only basic uploads are supported")
        objects = []
        for obj in request["objects"]:
            oid, size = obj["oid"], obj["size"]
            stored = self.store.object_path(repo_id, oid)
            if stored.is_file() and stored.stat().st_size == size:
                objects.append({"oid": oid, "size": size})
                continue
            secret = secrets.token_hex(16)
            self.store.uploads[secret] = (repo_id, oid)
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.base()}/lfs-upload/{secret}"},
                        "verify": {"href": f"{self.base()}/{repo_id}.git/info/lfs/objects/verify"},
                    },
                }
            )
        self.send(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, secret: str) -> None:
        if secret not in self.store.uploads:
            raise HubError(403, "upload URL expired or unknown")
        repo_id, oid = self.store.uploads.pop(secret)
        data = self.body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes do not hash to {oid}")
        self.store.put_object(repo_id, data)
        self.send(200, data=b"", headers={"ETag": f'"{oid}"'})

    def lfs_verify(self, repo_id: str) -> None:
        self.require_token()
        request = json.loads(self.body())
        stored = self.store.object_path(repo_id, request["oid"])
        if not stored.is_file() or stored.stat().st_size != request["size"]:
            raise HubError(404, f"object {request['oid']} was not uploaded")
        self.send(200, {})

    def commit(self, repo_id: str, revision: str) -> None:
        self.require_token()
        repo = self.store.repo(repo_id)
        if revision not in repo["branches"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo["branches"][revision]
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "the first line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"parentCommit {header['parentCommit']} is not the head {head}")
        tree = dict(self.store.commit(repo_id, head)["tree"])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                tree[value["path"]] = self.store.file_entry(repo_id, data, False)
            elif key == "lfsFile":
                stored = self.store.object_path(repo_id, value["oid"])
                if not stored.is_file() or stored.stat().st_size != value["size"]:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} is missing")
                pointer = f"oid sha256:{value['oid']}\nsize {value['size']}\n".encode()
                tree[value["path"]] = {
                    "sha256": value["oid"],
                    "size": value["size"],
                    "blob_id": git_blob_sha1(pointer),
                    "lfs": True,
                }
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        sha = self.store.new_commit(repo_id, head, tree, header["summary"])
        repo["branches"][revision] = sha
        self.store.save_repo(repo_id, repo)
        url = f"{self.base()}/{repo_id}/commit/{sha}"
        self.send(200, {"commitUrl": url, "commitOid": sha, "success": True})

    def validate_yaml(self) -> None:
        """The Hub's README metadata check: a YAML mapping with well-typed known keys."""
        import yaml

        content = json.loads(self.body())["content"]
        match = re.match(r"---\n(.*?)\n---\n", content, flags=re.S)
        errors = []
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            meta, errors = {}, [f"YAML does not parse: {error}"]
        if not isinstance(meta, dict):
            meta, errors = {}, ["metadata must be a YAML mapping"]
        for key in ("library_name", "license", "pipeline_tag"):
            if key in meta and not isinstance(meta[key], str):
                errors.append(f'"{key}" must be a string')
        for key in ("tags", "datasets", "metrics"):
            if key in meta and not all(isinstance(v, str) for v in meta[key]):
                errors.append(f'"{key}" must be a list of strings')
        for model in meta.get("model-index", []):
            for result in model.get("results", []):
                if not {"task", "dataset", "metrics"} <= set(result):
                    errors.append('"model-index" results need task, dataset and metrics')
        if errors:
            self.send(400, {"errors": [{"message": m} for m in errors]})
        else:
            self.send(200, {"errors": [], "warnings": []})

    # --- downloads ---------------------------------------------------------------------
    def resolve_file(self, repo_id: str, revision: str, path: str) -> None:
        self.readable(repo_id)
        sha = self.store.resolve(repo_id, revision)
        entry = self.store.commit(repo_id, sha)["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": sha}
        if entry["lfs"]:
            headers |= {
                "X-Linked-Etag": f'"{entry["sha256"]}"',
                "X-Linked-Size": str(entry["size"]),
                "ETag": f'"{entry["blob_id"]}"',
                "Location": self.signed_url(repo_id, entry["sha256"]),
            }
            self.send(302, data=b"", headers=headers)
            return
        headers["ETag"] = f'"{entry["blob_id"]}"'
        self.send_bytes(self.store.object_path(repo_id, entry["sha256"]).read_bytes(), headers)

    def signed_url(self, repo_id: str, oid: str) -> str:
        """A storage URL that works without the token, like the Hub's signed CDN links."""
        signature = hashlib.sha256(f"{self.token}/{repo_id}/{oid}".encode()).hexdigest()
        return f"{self.storage()}/lfs-files/{repo_id}/{oid}?signature={signature}"

    def lfs_file(self, repo_id: str, oid: str) -> None:
        if self.signed_url(repo_id, oid) != f"{self.storage()}{self.path}":
            raise HubError(403, "bad or missing signature")
        path = self.store.object_path(repo_id, oid)
        if not path.is_file():
            raise HubError(404, f"object {oid} not found")
        self.send_bytes(path.read_bytes(), {"ETag": f'"{oid}"'})

    def send_bytes(self, data: bytes, headers: dict) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None:
            self.send(200, data=data, headers=headers)
            return
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else len(data) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send(206, data=data[start : end + 1], headers=headers)


REPO = r"([\w.-]+/[\w.-]+)"
ROUTES = [
    ("POST", r"/api/repos/create", Handler.create_repo),
    ("POST", r"/api/validate-yaml", Handler.validate_yaml),
    ("POST", rf"/api/models/{REPO}/branch/([^/]+)", Handler.create_branch),
    ("POST", rf"/api/models/{REPO}/tag/([^/]+)", Handler.create_tag),
    ("POST", rf"/api/models/{REPO}/preupload/([^/]+)", Handler.preupload),
    ("POST", rf"/api/models/{REPO}/commit/([^/]+)", Handler.commit),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", Handler.lfs_verify),
    ("PUT", r"/lfs-upload/([0-9a-f]+)", Handler.lfs_upload),
    ("GET", rf"/api/models/{REPO}", Handler.info),
    ("GET", rf"/api/models/{REPO}/revision/([^/]+)", Handler.info),
    ("GET", rf"/api/models/{REPO}/refs", Handler.refs),
    ("GET", rf"/api/models/{REPO}/tree/([^/]+)", Handler.tree),
    ("GET", rf"/api/models/{REPO}/tree/([^/]+)/(.+)", Handler.tree),
    ("GET", rf"/{REPO}/resolve/([^/]+)/(.+)", Handler.resolve_file),
    ("HEAD", rf"/{REPO}/resolve/([^/]+)/(.+)", Handler.resolve_file),
    ("GET", rf"/lfs-files/{REPO}/([0-9a-f]{{64}})", Handler.lfs_file),
    ("HEAD", rf"/lfs-files/{REPO}/([0-9a-f]{{64}})", Handler.lfs_file),
]


def main() -> None:
    root, token = Path(sys.argv[1]), sys.argv[2]
    Handler.store, Handler.token = Store(root), token
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
