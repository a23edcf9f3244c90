"""Support for the dataset tests: miniature archives and a local HTTP server.

The server binds to a free port on 127.0.0.1 only, serves bytes with HTTP Range, can cut a
response short (a dropped connection) and can stand in for the Cityscapes site. Each request
runs in a daemon thread with a 10 s socket timeout; the fixture that starts it stops it.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


# ------------------------------------------------------------------ files and archives
def png(array: np.ndarray, *, palette: list[int] | None = None) -> bytes:
    """PNG bytes: RGB for [H,W,3], 8-bit grey for [H,W], palette (mode P) when ``palette`` is given."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    if palette is not None:
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        im.putpalette(palette)
    else:
        im = Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def jpg(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        dirs = sorted({name.rsplit("/", 1)[0] + "/" for name in files if "/" in name})
        for d in dirs:  # real archives list their folders too
            zf.writestr(d, b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar (``mode="w"``) or gzipped tar (``"w:gz"``) holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for d in sorted({name.rsplit("/", 1)[0] for name in files if "/" in name}):
            info = tarfile.TarInfo(d)  # real archives list their folders too
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FileServer:
    """Serves ``files[path_with_query] = bytes``; ``cuts[path] = [n, ...]`` makes the next
    responses for ``path`` stop after n body bytes (one entry used per request)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cuts: dict[str, list[int]] = {}
        self.ignore_range: set[str] = set()
        #: every request: {"method", "path", "range", "cookie"}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self) -> "FileServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._record(self, "GET")
                if not server.route(self, "GET"):
                    server.serve_file(self)

            def do_POST(self):
                server._record(self, "POST")
                if not server.route(self, "POST"):
                    self.send_error(405)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = None

    @property
    def base(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    # -- behaviour
    def _record(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": h.path, "range": h.headers.get("Range"),
                                  "cookie": h.headers.get("Cookie")})

    def requests_for(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def route(self, h: BaseHTTPRequestHandler, method: str) -> bool:
        """Override to answer some paths; return True when answered."""
        return False

    def serve_file(self, h: BaseHTTPRequestHandler) -> None:
        data = self.files.get(h.path)
        if data is None:
            h.send_error(404)
            return
        total, start = len(data), 0
        rng = h.headers.get("Range")
        if rng and h.path not in self.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= total:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{total}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        with self.lock:
            cuts = self.cuts.get(h.path)
            cut = cuts.pop(0) if cuts else None
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True  # the rest never comes
            return
        h.wfile.write(body)


class CityscapesSite(FileServer):
    """A stand-in for www.cityscapes-dataset.com as cityscapesscripts 2.3.0 talks to it:
    ``/login`` (form post, 302 on success, a session cookie), ``/downloads/?list`` (JSON),
    ``/md5-sum/?packageID=N`` and ``/file-handling/?packageID=N`` (Range supported)."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__()
        self.username, self.password = username, password
        self.token = secrets.token_hex(8)
        self.packages: dict[str, dict] = {}  # name -> {"id", "data", "md5"}
        self.login_posts: list[dict[str, list[str]]] = []

    def add_package(self, name: str, data: bytes, md5: str | None = None) -> None:
        pid = str(len(self.packages) + 1)
        self.packages[name] = {"id": pid, "md5": md5 or hashlib.md5(data).hexdigest()}
        self.files[f"/file-handling/?packageID={pid}"] = data

    def file_path(self, name: str) -> str:
        return f"/file-handling/?packageID={self.packages[name]['id']}"

    def _logged_in(self, h) -> bool:
        return f"session={self.token}" in (h.headers.get("Cookie") or "")

    def _send(self, h, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def route(self, h, method: str) -> bool:
        parts = urlsplit(h.path)
        if parts.path == "/login":
            if method == "GET":
                self._send(h, 200, b"<form>login</form>")
                return True
            form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length", 0))).decode())
            self.login_posts.append(form)
            if form.get("username") == [self.username] and form.get("password") == [self.password]:
                self._send(h, 302, headers={"Location": "/", "Set-Cookie": f"session={self.token}; Path=/"})
            else:
                self._send(h, 200, b"<p>wrong username or password</p>")
            return True
        if parts.path in ("/downloads/", "/md5-sum/", "/file-handling/") and not self._logged_in(h):
            self._send(h, 302, headers={"Location": "/login"})
            return True
        if parts.path == "/downloads/" and parts.query == "list":
            listing = [{"name": n, "packageID": p["id"], "size": f"{max(len(self.files[self.file_path(n)]) / 1024, 0.01):.2f}KB",
                        "thirdparty": "0"} for n, p in self.packages.items()]
            self._send(h, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
            return True
        if parts.path == "/md5-sum/":
            pid = parse_qs(parts.query)["packageID"][0]
            name, pkg = next((n, p) for n, p in self.packages.items() if p["id"] == pid)
            self._send(h, 200, f"{pkg['md5']}  {name}\n".encode())
            return True
        return False  # /file-handling/: serve_file (Range, cuts)
