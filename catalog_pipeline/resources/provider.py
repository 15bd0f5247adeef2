"""The stats provider: an HTTP client for its playcount contract, and the daily quota.

`GET {PLAYCOUNT_API_URL}/items/{external_id}/playcounts` with `Authorization: Bearer KEY`
answers `{"history": [{"date": "YYYY-MM-DD", "value": N}]}`. The client makes exactly one
request per call (retries are the queue's business, so each one is in the ledger), never
follows redirects (the key must not travel to another host), bounds the whole call by a
deadline and the body by a size limit, and never puts the key in a message.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request

import dagster as dg

from catalog_pipeline.core.playcount import DEFAULT_DAILY_QUOTA, ProviderResponse
from catalog_pipeline.resources.catalog import _env_or
from catalog_pipeline.settings import (
    PLAYCOUNT_API_KEY,
    PLAYCOUNT_API_URL,
    PLAYCOUNT_DAILY_QUOTA,
    PLAYCOUNT_TIMEOUT_SECONDS,
)

MAX_BODY_BYTES = 4 * 1024 * 1024
_READ_BYTES = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx comes back as an HTTPError: an unexpected answer, not followed


class StatsProviderClient:
    """One `fetch` per call; every outcome is a `ProviderResponse`, never an exception."""

    def __init__(self, api_url: str, api_key: str | None, timeout_seconds: float) -> None:
        self.api_url = api_url.rstrip("/")
        self._api_key = api_key
        self.timeout_seconds = timeout_seconds
        self._opener = urllib.request.build_opener(_NoRedirects)

    def __repr__(self) -> str:  # no key in reprs or tracebacks
        return f"StatsProviderClient({self.api_url!r}, timeout_seconds={self.timeout_seconds})"

    def url_for(self, external_id: str) -> str:
        # Quoted whole: an id like "../admin" or "a/b?x" stays one path segment.
        return f"{self.api_url}/items/{urllib.parse.quote(external_id, safe='')}/playcounts"

    def fetch(self, external_id: str) -> ProviderResponse:
        request = urllib.request.Request(self.url_for(external_id), method="GET")
        request.add_header("Accept", "application/json")
        if self._api_key:
            request.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
        started = time.monotonic()
        deadline = started + self.timeout_seconds

        def elapsed_ms() -> float:
            return round((time.monotonic() - started) * 1000, 3)

        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as answer:
                body = _read_until(answer, deadline)
                return ProviderResponse(
                    answer.status,
                    body,
                    answer.headers.get("Retry-After"),
                    latency_ms=elapsed_ms(),
                )
        except urllib.error.HTTPError as error:
            try:
                body = _read_until(error, deadline)
            except (TimeoutError, OSError, http.client.HTTPException, _BodyError):
                body = b""
            return ProviderResponse(
                error.code, body, error.headers.get("Retry-After"), latency_ms=elapsed_ms()
            )
        except _BodyError as error:
            return ProviderResponse(
                None, timed_out=error.timed_out, error=str(error), latency_ms=elapsed_ms()
            )
        except TimeoutError:
            return ProviderResponse(
                None,
                timed_out=True,
                error=f"no answer within {self.timeout_seconds:g} s",
                latency_ms=elapsed_ms(),
            )
        except urllib.error.URLError as error:
            timed_out = isinstance(error.reason, TimeoutError)
            reason = f"no answer within {self.timeout_seconds:g} s" if timed_out else error.reason
            return ProviderResponse(
                None, timed_out=timed_out, error=str(reason), latency_ms=elapsed_ms()
            )
        except (OSError, http.client.HTTPException) as error:
            return ProviderResponse(
                None, error=f"{type(error).__name__}: {error}", latency_ms=elapsed_ms()
            )


class _BodyError(Exception):
    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _read_until(answer, deadline: float) -> bytes:
    """The body, unless it takes longer than the deadline or is larger than the limit."""
    parts: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise _BodyError("the body did not arrive within the timeout", timed_out=True)
        part = answer.read1(_READ_BYTES) if hasattr(answer, "read1") else answer.read()
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise _BodyError(f"body larger than {MAX_BODY_BYTES:,} bytes", timed_out=False)
        parts.append(part)


class StatsProvider(dg.ConfigurableResource):
    """The rate-limited stats provider: where it is, its key, and the daily call budget."""

    api_url: str | None = None  # unset: the maintenance pass skips the provider drain
    api_key: str | None = None
    daily_quota: int = DEFAULT_DAILY_QUOTA  # quota units per UTC day, counted in the ledger
    timeout_seconds: int = 10  # the whole call: connect, answer and body

    @property
    def configured(self) -> bool:
        return bool(self.api_url)

    def client(self) -> StatsProviderClient:
        if not self.api_url:
            raise ValueError(f"{PLAYCOUNT_API_URL} is not set")
        return StatsProviderClient(self.api_url, self.api_key, self.timeout_seconds)


def default_stats_provider() -> StatsProvider:
    """The provider from `PLAYCOUNT_*` variables; the key only ever as an `EnvVar`."""
    return StatsProvider(
        api_url=_env_or(PLAYCOUNT_API_URL, None),
        api_key=_env_or(PLAYCOUNT_API_KEY, None),
        daily_quota=_env_or(PLAYCOUNT_DAILY_QUOTA, DEFAULT_DAILY_QUOTA, dg.EnvVar.int),
        timeout_seconds=_env_or(PLAYCOUNT_TIMEOUT_SECONDS, 10, dg.EnvVar.int),
    )
