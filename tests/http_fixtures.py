"""A real HTTP server on 127.0.0.1 for the downloader's tests, with scripted misbehaviour.

Each path serves bytes the test gives it. A route's ``plan`` lists what the
first requests to that path get, one action per request, before the route
falls back to serving the file normally:

- ``Status(503)``: answer that status with no file;
- ``Cut(after=N)``: announce the whole (remaining) file, send N bytes, drop the connection;
- ``Corrupt()``: send the file with its bytes flipped (same length);
- ``Stall(seconds)``: send the headers and a few bytes, then go silent;
- ``WrongRange()``: answer a Range request with 206 but a Content-Range from byte 0.

``support_range=False`` makes the route ignore Range headers (always 200, whole file).
Every request is logged (path, Range header, status) in ``server.requests``.
Nothing here talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import io
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from amc.download import Artifact


@dataclass(frozen=True)
class Status:
    code: int


@dataclass(frozen=True)
class Cut:
    after: int


@dataclass(frozen=True)
class Corrupt:
    pass


@dataclass(frozen=True)
class Stall:
    seconds: float


@dataclass(frozen=True)
class WrongRange:
    pass


@dataclass
class Route:
    body: bytes
    plan: list = field(default_factory=list)
    support_range: bool = True
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int


class FileServer:
    """``with FileServer() as server: url = server.add("/a.zip", data, plan=[Cut(100)])``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **options) -> str:
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends any Stall early
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Called from the handler threads.
    def _next_action(self, path: str):
        with self._lock:
            route = self.routes.get(path)
            if route is None:
                return None, None
            return route, (route.plan.pop(0) if route.plan else None)

    def _log(self, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Request(path, range_header, status))


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # keep test output quiet
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on this request (a timeout test): expected

        def do_GET(self) -> None:
            self.close_connection = True
            range_header = self.headers.get("Range")
            route, action = server._next_action(self.path)
            if route is None:
                return self._status(404, range_header)
            if isinstance(action, Status):
                return self._status(action.code, range_header)

            body, start, status = route.body, 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if route.support_range and match:
                start, status = int(match.group(1)), 206
                if start >= len(body):
                    return self._status(416, range_header)
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            if isinstance(action, WrongRange) and status == 206:
                content_range = f"bytes 0-{len(body) - 1}/{len(body)}"
            payload = body[start:]
            if isinstance(action, Corrupt):
                payload = bytes(b ^ 0xFF for b in payload)

            server._log(self.path, range_header, status)
            self.send_response(status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(payload)))
            if status == 206:
                self.send_header("Content-Range", content_range)
            if route.support_range:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

            if isinstance(action, Cut):
                self.wfile.write(payload[: action.after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif isinstance(action, Stall):
                self.wfile.write(payload[:16])
                self.wfile.flush()
                server._stopping.wait(action.seconds)
            else:
                self.wfile.write(payload)

        def _status(self, code: int, range_header: str | None) -> None:
            server._log(self.path, range_header, code)
            body = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def refused_port() -> socket.socket:
    """A bound socket that does not listen: connecting to its port is refused.

    Keep the returned socket open for as long as the port must stay unused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# --------------------------------------------------------------------------- the downloader tests' helpers

FAST = {"retries": 3, "timeout": 5.0, "progress": False, "backoff": 0.001}


def artifact(name: str = "blob", urls=(), filename: str = "files/blob.bin", **fields) -> Artifact:
    values = {
        "size": None,
        "sha256": None,
        "unpack": "none",
        "unpack_to": None,
        "produces": (filename,),
        "description": "test artifact",
        "license": "test",
    }
    values.update(fields)
    return Artifact(name=name, urls=tuple(urls), filename=filename, **values)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A .tar.gz; ``links`` maps a member name to (tarfile.SYMTYPE or LNKTYPE, link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()
