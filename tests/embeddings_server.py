"""A local HTTP server speaking the OpenAI embeddings contract, for embedder tests.

`POST /v1/embeddings` with `{"model", "input": [texts], "dimensions"}` is answered with
`{"data": [{"index": i, "embedding": [...]}, ...]}`: each text's vector comes from a hash
of the text (`vector_for`), so it is the same on every run and in every batch, and it is
not unit length (the client must scale it). Tests make it misbehave:

- `script`: answers served first, one per request: a status, a raw body, headers;
- `poison`: texts that make any request holding one answer 400 (as a text too long would);
- `short`: texts whose vector comes back one float short; `dropped`: texts left out;
- `stalls`: extra seconds spent on the next requests, one each (to outlive a timeout);
- `api_key`: when set, a request without `Authorization: Bearer <api_key>` gets 401;
- `reverse`: answer `data` in reverse order (the client must match by `index`).

Every request is recorded (`requests`, `batch_sizes()`), with the status it got.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

Answer = tuple[int, bytes, dict]


def vector_for(text: str, dimensions: int) -> list[float]:
    """The server's vector of `text`: deterministic, never unit length."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return (np.random.default_rng(seed).normal(size=dimensions) * 3.0).tolist()


def error_body(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


class EmbeddingsServer:
    """Start with `with EmbeddingsServer() as server:`; `server.base_url` ends in `/v1`."""

    def __init__(self, api_key: str | None = None, reverse: bool = False) -> None:
        self.api_key = api_key
        self.reverse = reverse
        self.script: list[Answer] = []
        self.poison: set[str] = set()
        self.short: set[str] = set()
        self.dropped: set[str] = set()
        self.stalls: list[float] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload, headers = server.respond(self.path, dict(self.headers), body)
                with server._lock:
                    stall = server.stalls.pop(0) if server.stalls else 0.0
                try:
                    time.sleep(stall)
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )  # a short poll: the server stops at once at the end of a test

    def respond(self, path: str, headers: dict, body: dict) -> Answer:
        with self._lock:
            scripted = self.script.pop(0) if self.script else None
        answer = scripted or self._answer(path, headers, body)
        with self._lock:
            self.requests.append(
                {"path": path, "headers": headers, "body": body, "status": answer[0]}
            )
        return answer

    def _answer(self, path: str, headers: dict, body: dict) -> Answer:
        if path != "/v1/embeddings":
            return 404, error_body(f"no route {path}", "not_found"), {}
        if self.api_key and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, error_body("Incorrect API key provided", "invalid_api_key"), {}
        texts, dimensions = body["input"], body["dimensions"]
        for text in texts:
            if text in self.poison:
                return 400, error_body(f"input {text[:20]!r} is too long for the model"), {}
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": vector_for(text, dimensions)[: dimensions - (text in self.short)],
            }
            for index, text in enumerate(texts)
            if text not in self.dropped
        ]
        if self.reverse:
            data.reverse()
        answer = {"object": "list", "data": data, "model": body["model"]}
        return 200, json.dumps(answer).encode(), {}

    def batch_sizes(self) -> list[int]:
        """The number of inputs of each request, in order."""
        return [len(request["body"]["input"]) for request in self.requests]

    def statuses(self) -> list[int]:
        return [request["status"] for request in self.requests]

    def __enter__(self) -> EmbeddingsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
