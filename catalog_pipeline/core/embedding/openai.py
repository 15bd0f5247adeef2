"""An embedder backed by any OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`).

Batches of at most `batch_size` texts go out in one request each, with a bearer key and a
timeout. Failures are sorted the way the rest of the pipeline sorts them (`core.errors`,
`core.retry`), because they call for different answers:

- **transient** (connection refused or reset, timeouts, HTTP 408, 429 and 5xx): retried
  with backoff while the retry budget lasts, a `Retry-After` honoured up to the policy's
  longest wait. Still failing at the end of the budget, the endpoint is down: an
  `EmbedderError` fails the run and no item is blamed;
- **configuration** (401/403: the key; 404: the URL or the model): `EmbedderError` at once;
- **an input the server refuses** (any other 4xx, typically a text too long for the model):
  the batch is split in halves, again and again, until the items that fail on their own
  are found; each becomes a failure with the server's message and the others are
  embedded, so a few bad items never cost their whole batch.

A vector that is missing from an answer, has the wrong length or is not numbers fails its
item alone; an answer that is not the contract at all (no `data` list) is the endpoint's
fault, an `EmbedderError`.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import numpy as np

from catalog_pipeline.core.embedding.base import (
    EmbeddedBatch,
    EmbedderError,
    checked_key,
    unit_rows,
)
from catalog_pipeline.core.embedding.document import ItemDocument
from catalog_pipeline.core.errors import (
    PermanentError,
    RetriesExhaustedError,
    TransientError,
    is_transient,
)
from catalog_pipeline.core.retry import RetryPolicy, retrying

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_STATUSES = frozenset({401, 403})
DETAIL_CHARS = 300  # enough of a server's error message to act on, not a whole HTML page

log = logging.getLogger("catalog_pipeline.embedding")
Answer = np.ndarray | str  # one input's unit vector, or why it has none


class EndpointUnavailable(TransientError):
    """A 408, 429 or 5xx answer, or one that broke off: worth another attempt. Carries the
    seconds the server asked us to wait (`Retry-After`), 0 when it did not say."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InputRejected(PermanentError):
    """A 4xx that blames the input rather than the key or the URL (`reason`: the server's
    words): the batch is bisected to find the items at fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OpenAIEmbedder:
    """Embeds documents through an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        dimensions: int,
        batch_size: int = 64,
        timeout_seconds: float = 30,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise EmbedderError(f"embedding base URL must be http(s): {base_url!r}")
        if dimensions < 1 or batch_size < 1 or timeout_seconds <= 0:
            raise EmbedderError(
                f"embedder {model}: dimensions ({dimensions}), batch size ({batch_size}) "
                f"and timeout ({timeout_seconds} s) must be positive"
            )
        self.key = checked_key(f"{model}@{dimensions}")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.dimension = dimensions
        self.batch_size = batch_size
        self.timeout_seconds = timeout_seconds
        # None: the project default, read at each request, so CATALOG_RETRY_BUDGET_S applies.
        self.retry_policy = retry_policy
        self.requests_made = 0  # attempts, retries included (reported as metadata)
        self._sleep = sleep
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEmbedder(url={self.url!r}, key={self.key!r})"

    def embed_documents(self, documents: Sequence[ItemDocument]) -> EmbeddedBatch:
        texts = [document.text() for document in documents]
        answers: dict[int, Answer] = {
            position: "empty document: nothing to embed"
            for position, text in enumerate(texts)
            if not text.strip()  # refused by the API anyway: spare the request
        }
        pending = [position for position in range(len(texts)) if position not in answers]
        for start in range(0, len(pending), self.batch_size):
            self._embed(pending[start : start + self.batch_size], texts, answers)
        embedded = tuple(p for p in range(len(texts)) if isinstance(answers[p], np.ndarray))
        vectors = np.zeros((len(embedded), self.dimension), dtype=np.float32)
        for row, position in enumerate(embedded):
            vectors[row] = answers[position]
        failures = {p: answer for p, answer in answers.items() if isinstance(answer, str)}
        return EmbeddedBatch(vectors, embedded, failures)

    def embed_query(self, text: str) -> np.ndarray:
        if not text.strip():  # as the hashing embedder: a blank search matches nothing
            return np.zeros(self.dimension, dtype=np.float32)
        try:
            (answer,) = self._request([text])
        except InputRejected as rejected:
            raise EmbedderError(f"{self.url} refused the search text: {rejected}") from rejected
        if isinstance(answer, str):
            raise EmbedderError(f"{self.url} gave no usable vector for the search text: {answer}")
        return answer

    def _embed(self, positions: list[int], texts: list[str], answers: dict[int, Answer]) -> None:
        """Fill `answers` for `positions`; a refused request is split in halves until the
        inputs that fail on their own are found (a single one is blamed with the reason)."""
        try:
            answered = self._request([texts[position] for position in positions])
        except InputRejected as rejected:
            if len(positions) == 1:
                answers[positions[0]] = rejected.reason
                return
            middle = len(positions) // 2
            self._embed(positions[:middle], texts, answers)
            self._embed(positions[middle:], texts, answers)
            return
        answers.update(zip(positions, answered, strict=True))

    def _request(self, texts: list[str]) -> list[Answer]:
        body = {
            "model": self.model,
            "input": texts,
            "dimensions": self.dimension,
            "encoding_format": "float",
        }
        return self._answers(self._post(json.dumps(body).encode("utf-8")), len(texts))

    def _post(self, data: bytes) -> bytes:
        """The answer to one request, retried while it fails transiently (`retrying`)."""
        policy = self.retry_policy or RetryPolicy.from_environment()
        started = time.monotonic()
        asked = [0.0]  # the last answer's Retry-After, in seconds

        def remember(attempt: int, delay: float, error: BaseException) -> None:
            asked[0] = getattr(error, "retry_after", 0.0)
            log.warning(
                "%s: transient failure (attempt %d), retrying: %s", self.url, attempt, error
            )

        def wait(delay: float) -> None:
            # `retrying` chose `delay` within the budget; the server's wish may be longer,
            # but never past the policy's longest wait or the end of the budget.
            left = policy.budget_seconds - (time.monotonic() - started)
            self._sleep(max(delay, min(asked[0], policy.max_delay, left)))

        what = f"embedding with {self.model} at {self.url}"
        try:
            return retrying(lambda: self._attempt(data), what, policy, remember, wait)
        except RetriesExhaustedError as error:
            raise EmbedderError(f"the embedding endpoint is unavailable: {error}") from error
        except (OSError, http.client.HTTPException) as error:  # not transient: nothing helps
            raise EmbedderError(f"{self.url} cannot be reached: {error}") from error

    def _attempt(self, data: bytes) -> bytes:
        self.requests_made += 1
        request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise self._refusal(error) from error
        except http.client.HTTPException as error:  # the answer broke off mid-way
            raise EndpointUnavailable(f"{self.url}: {type(error).__name__}: {error}") from error

    def _refusal(self, error: urllib.error.HTTPError) -> Exception:
        """The error an HTTP error answer stands for (see the module docstring)."""
        status, detail = error.code, _server_message(error)
        answered = f"{self.url} (model {self.model}) answered HTTP {status}"
        if status in KEY_STATUSES:
            return EmbedderError(f"{answered}: the API key is missing or refused: {detail}")
        if status == 404:
            return EmbedderError(f"{answered}: check the base URL and the model: {detail}")
        if is_transient(error):
            retry_after = retry_after_seconds(error.headers.get("Retry-After"))
            return EndpointUnavailable(f"{answered}: {detail}", retry_after)
        if 400 <= status < 500:
            return InputRejected(f"refused by the embedding endpoint (HTTP {status}): {detail}")
        return EmbedderError(f"{answered}: {detail}")  # a redirect urllib did not follow

    def _answers(self, payload: bytes, count: int) -> list[Answer]:
        """One answer per input, matched by `index` (the order of `data` is not promised)."""
        try:
            entries = json.loads(payload)["data"]
            if not isinstance(entries, list):
                raise TypeError("`data` is not a list")
        except (ValueError, KeyError, TypeError) as error:
            start = payload[:DETAIL_CHARS].decode("utf-8", "replace")
            raise EmbedderError(
                f"{self.url} answered without a `data` list of embeddings ({error}): {start}"
            ) from error
        embeddings: dict[int, object] = {}
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("index"), int):
                embeddings.setdefault(entry["index"], entry.get("embedding"))
        return [self._vector(embeddings.get(index)) for index in range(count)]

    def _vector(self, embedding: object) -> Answer:
        if embedding is None:
            return "the endpoint's answer has no embedding for this input"
        if not isinstance(embedding, list):
            return f"the embedding is a {type(embedding).__name__}, not a list of floats"
        if len(embedding) != self.dimension:
            return f"the embedding has {len(embedding)} floats, expected {self.dimension}"
        try:
            vector = np.asarray(embedding, dtype=np.float32)
        except (TypeError, ValueError):
            return "the embedding holds something other than numbers"
        if not np.isfinite(vector).all() or not vector.any():
            return "the embedding is all zeros or not finite: it cannot be compared"
        return unit_rows(vector[None, :])[0]


def retry_after_seconds(value: str | None) -> float:
    """A `Retry-After` header in seconds (it may give seconds or an HTTP date); 0 when
    absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else 0.0


def _server_message(error: urllib.error.HTTPError) -> str:
    """What the server said about an error answer: OpenAI's `error.message` when the body
    is its JSON, else the start of the body."""
    try:
        body = error.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        body = ""
    finally:
        error.close()
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        found = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(found, dict):
            found = found.get("message")
        if isinstance(found, str) and found.strip():
            body = found
    return body.strip()[:DETAIL_CHARS] or "(no message)"
