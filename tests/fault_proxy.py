"""A loopback HTTP reverse proxy in front of a real S3 API server that can misbehave.

Every request (method, path and query, headers, body) is forwarded to the upstream and
its answer relayed, until a fault window is opened with `inject`: then the matching
requests get what a throttled or failing object store gives (a SlowDown 503, an
InternalError 500, a connection closed without an answer, or a body cut short), for
the next `count` of them or for `seconds`. The client under test is the real boto3;
only the wire misbehaves.

    with FaultProxy(s3_server) as proxy:
        bucket = S3Bucket(name, "", endpoint_url=proxy.url)
        proxy.inject("slowdown", count=6, match=RANGED_GETS)
        ...
        assert proxy.counts["slowdown"] == 6
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal_error", "drop", "truncate")
# Connection-level headers belong to one hop; the proxy sets its own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass(frozen=True, slots=True)
class Match:
    """Which requests a fault window hits; every given field must match.

    `method`: the HTTP method. `path`: a substring of the request target (path and
    query, e.g. "list-type=2" for a listing). `range`: a substring of the Range header
    ("bytes=" for any ranged read); requests without one never match it."""

    method: str | None = None
    path: str | None = None
    range: str | None = None

    def __call__(self, method: str, target: str, range_header: str | None) -> bool:
        return (
            (self.method is None or method.upper() == self.method.upper())
            and (self.path is None or self.path in target)
            and (self.range is None or (range_header is not None and self.range in range_header))
        )


RANGED_GETS = Match(method="GET", range="bytes=")  # the chunk reads, not the planning read
LISTINGS = Match(method="GET", path="list-type=2")  # ListObjectsV2


@dataclass(slots=True)
class _Window:
    kind: str
    count: int | None
    deadline: float | None
    match: Match | None
    injected: int = 0

    def open(self, now: float) -> bool:
        if self.count is not None and self.injected >= self.count:
            return False
        return self.deadline is None or now < self.deadline


class FaultProxy:
    """Forwards to `upstream_url` (an http:// endpoint) from `.url` on 127.0.0.1."""

    def __init__(
        self,
        upstream_url: str,
        timeout: float = 30.0,
        latency: float = 0.0,
        latency_match: Match | None = None,
    ) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"upstream {upstream_url!r}: give an http://HOST:PORT endpoint")
        self.upstream = (upstream.hostname, upstream.port or 80)
        self.timeout = timeout
        # Seconds added to each forwarded request (`latency_match`: only those): a far server.
        self.latency, self.latency_match = latency, latency_match
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.requests = 0  # every request received, faulted or forwarded
        self.log: list[tuple[str, str, str | None, str | None]] = []  # method, target, range, fault
        self._windows: list[_Window] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def inject(
        self,
        kind: str,
        count: int | None = None,
        seconds: float | None = None,
        match: Match | None = None,
    ) -> None:
        """Fault the next `count` matching requests, or every one for `seconds` (with
        both, whichever ends first; with neither, until `clear`)."""
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r}: one of {', '.join(KINDS)}")
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._lock:
            self._windows.append(_Window(kind, count, deadline, match))

    def clear(self) -> None:
        """Close every fault window: from now on every request is forwarded."""
        with self._lock:
            self._windows.clear()

    def faulted(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _fault_for(self, method: str, target: str, range_header: str | None) -> str | None:
        with self._lock:
            self.requests += 1
            now = time.monotonic()
            self._windows = [window for window in self._windows if window.open(now)]
            for window in self._windows:
                if window.match is None or window.match(method, target, range_header):
                    window.injected += 1
                    self.counts[window.kind] += 1
                    self.log.append((method, target, range_header, window.kind))
                    return window.kind
            self.log.append((method, target, range_header, None))
            return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
            timeout = proxy.timeout

            def log_message(self, format: str, *args) -> None:  # quiet test output
                pass

            def _forward(self) -> None:
                body = self._read_body()
                if proxy.latency and (
                    proxy.latency_match is None
                    or proxy.latency_match(self.command, self.path, self.headers.get("Range"))
                ):
                    time.sleep(proxy.latency)  # before any fault: a far server fails late
                fault = proxy._fault_for(self.command, self.path, self.headers.get("Range"))
                if fault == "drop":
                    self.close_connection = True  # the socket closes with no answer at all
                    return
                if fault in _ERRORS:
                    self._send_error(*_ERRORS[fault])
                    return
                status, reason, headers, payload = self._upstream(body)
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":
                    length = dict((n.lower(), v) for n, v in headers).get("content-length")
                    if length is not None:
                        self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(payload)))
                if fault == "truncate":
                    # Promise the whole body, deliver part of it, hang up.
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _upstream(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.timeout)
                try:
                    headers = {
                        name: value
                        for name, value in self.headers.items()
                        if name.lower() not in HOP_BY_HOP | {"content-length", "expect"}
                    }
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                    return response.status, response.reason, response.getheaders(), payload
                finally:
                    connection.close()

            def _send_error(self, status: int, code: str, message: str) -> None:
                payload = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    f"<RequestId>fault-proxy</RequestId></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header(
                    "Content-Length", str(len(payload) if self.command != "HEAD" else 0)
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
