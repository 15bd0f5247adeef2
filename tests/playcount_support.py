"""Playcount test support: a local stats provider with scripted answers, and seeding.

`GET /items/{external_id}/playcounts` with `Authorization: Bearer <key>`. Each external_id
answers from its script in order (the last answer repeats): `history(...)` (200),
`status(code, retry_after=...)`, or `HANG` (hold the request until released or 30 s, so
the client's timeout fires). Unscripted ids answer 404; a wrong key answers 401.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "test-key-7c1f0e5a"
HANG = "hang"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict | None = None
    retry_after: str | None = None


def history(*values: int, start_day: int = 1) -> Answer:
    return Answer(
        200,
        {
            "history": [
                {"date": f"2026-10-{start_day + i:02d}", "value": value}
                for i, value in enumerate(values)
            ]
        },
    )


def status(code: int, retry_after: str | None = None) -> Answer:
    return Answer(code, {"error": f"scripted {code}"}, retry_after)


class ScriptedProvider:
    def __init__(self, key: str = KEY, delay_seconds: float = 0.0) -> None:
        self.key = key
        self.delay_seconds = delay_seconds
        self.scripts: dict[str, list] = {}
        self.calls: Counter = Counter()
        self.authorizations: set[str] = set()
        self.hanging = threading.Event()  # set when a HANG answer is being held
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.url = ""

    def script(self, external_id: str, *answers) -> None:
        self.scripts[external_id] = list(answers)

    def answer_for(self, external_id: str):
        with self._lock:
            self.calls[external_id] += 1
            script = self.scripts.get(external_id)
            if not script:
                return status(404)
            return script.pop(0) if len(script) > 1 else script[0]


def _handler(provider: ScriptedProvider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "items" or parts[3] != "playcounts":
                return self._send(status(400))
            authorization = self.headers.get("Authorization", "")
            provider.authorizations.add(authorization)
            if authorization != f"Bearer {provider.key}":
                return self._send(status(401))
            answer = provider.answer_for(urllib.parse.unquote(parts[2]))
            if provider.delay_seconds:
                time.sleep(provider.delay_seconds)
            if answer == HANG:
                provider.hanging.set()
                provider.release.wait(30)
                return None  # the client gave up long ago; close without answering
            return self._send(answer)

        def _send(self, answer: Answer) -> None:
            body = json.dumps(answer.body or {}).encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if answer.retry_after is not None:
                self.send_header("Retry-After", answer.retry_after)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def scripted_provider(**options) -> Iterator[ScriptedProvider]:
    """The provider on 127.0.0.1 in a thread; stopped (and held requests released) after."""
    provider = ScriptedProvider(**options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield provider
    finally:
        provider.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


HEADER = "sku,name,url,play_count,isrc\n"


def catalog_csv(rows) -> bytes:
    """A scrape with (sku, play_count, external_id) rows; None leaves a field empty."""
    lines = [
        f"{sku},Song {sku},https://music.example/{sku},"
        f"{'' if plays is None else plays},{external_id or ''}\n"
        for sku, plays, external_id in rows
    ]
    return (HEADER + "".join(lines)).encode()


def ingest_scrape(bucket, engine, rows, key: str = "shop_2026-11-01T06-00-00.csv") -> None:
    """Ingest the rows through the real ingest path (plan, chunks, finalize)."""
    from catalog_pipeline.ingest import ingest_object

    bucket.put(key, catalog_csv(rows))
    summary, _ = ingest_object(bucket, engine, key, 1 << 20)
    assert summary.status == "completed", summary
