"""A local HTTP server speaking the OpenAI chat-completions contract, for classifier tests.

`POST /v1/chat/completions` with a JSON body whose last message holds the items (a JSON
list of `{"id", "name", "brand", "category", "description"}`) is answered with
`{"choices": [{"message": {"content": "<JSON answer>"}}]}`. By default every item gets the
category its scraper gave it when that is a taxonomy path, else `unclassified`. Tests
queue scripted answers (`script`) that are served first: a status, a raw body, headers.
The server records every request and the highest number of requests in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from catalog_pipeline.core.classification import UNCLASSIFIED, load_taxonomy

PATHS = set(load_taxonomy().paths)


def scraper_category(item: dict) -> dict:
    category = item.get("category") if item.get("category") in PATHS else UNCLASSIFIED
    return {"id": item["id"], "category": category, "confidence": 0.9}


def completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}},
            ],
        }
    ).encode()


class ChatServer:
    """Start with `with ChatServer() as server:`; `server.base_url` ends in `/v1`."""

    def __init__(
        self,
        answer: Callable[[dict], dict] = scraper_category,
        delay: float = 0.0,
        hold_first: float = 0.0,
    ) -> None:
        self.answer = answer  # item -> its entry in the answer
        self.delay = delay  # seconds spent on each request (to make overlaps visible)
        # The first request is held until a second one is in flight or this many seconds
        # pass: callers allowed to overlap certainly do, callers that are not lose only this.
        self.hold_first = hold_first
        self._company = threading.Event()
        self._first_taken = False
        self.script: list[tuple[int, bytes, dict]] = []
        self.stalls: list[float] = []  # extra seconds for the next requests, one each
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if server.in_flight > 1:
                        server._company.set()
                    first, server._first_taken = not server._first_taken, True
                if first and server.hold_first:
                    server._company.wait(server.hold_first)
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    body = json.loads(self.rfile.read(length))
                    status, payload, headers = server.respond(self.path, dict(self.headers), body)
                    with server._lock:
                        stall = server.stalls.pop(0) if server.stalls else 0.0
                    if server.delay or stall:
                        time.sleep(server.delay + stall)
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def respond(self, path: str, headers: dict, body: dict) -> tuple[int, bytes, dict]:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
            scripted = self.script.pop(0) if self.script else None
        if scripted is None and path != "/v1/chat/completions":
            scripted = (404, b'{"error": "not found"}', {})
        if scripted is None:
            items = json.loads(body["messages"][-1]["content"])
            answer = {"classifications": [self.answer(item) for item in items]}
            scripted = (200, completion(json.dumps(answer)), {})
        with self._lock:
            self.statuses.append(scripted[0])
        return scripted

    def items_asked(self) -> list[dict]:
        """Every item sent in a successful or failed request, in order."""
        return [
            item
            for request in self.requests
            if request["path"] == "/v1/chat/completions"
            for item in json.loads(request["body"]["messages"][-1]["content"])
        ]

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
