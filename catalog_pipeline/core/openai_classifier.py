"""A classifier backed by any OpenAI-compatible chat-completions endpoint.

One request per batch (`POST {base_url}/chat/completions`, bearer key), JSON-only answers,
a timeout on every request, retries with exponential backoff on 429, 5xx, timeouts and
connection errors (a `Retry-After` header is honoured up to the backoff cap), and strict
parsing of every answer against the taxonomy (`parse_answer`). Other 4xx answers (a bad key,
an unknown model) are configuration errors: they fail at once, without retries.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from catalog_pipeline.core.classification import (
    UNCLASSIFIED,
    AnswerError,
    ClassifierError,
    Failed,
    ItemText,
    Outcome,
    Taxonomy,
    load_taxonomy,
    parse_answer,
)

PROMPT_VERSION = "p1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DESCRIPTION_CHARS = 600  # enough to classify; long scraped descriptions cost tokens
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class ClassifierUnavailable(ClassifierError):
    """The endpoint kept failing (429/5xx/timeouts) after every retry."""


def system_prompt(taxonomy: Taxonomy) -> str:
    categories = "\n".join(
        f"- {category.path}: {category.label}" for category in taxonomy.categories
    )
    return (
        "You classify products of an online catalog into exactly one category of this "
        f"taxonomy (version {taxonomy.version}):\n{categories}\n"
        f"- {UNCLASSIFIED}: none of the above fits\n"
        'Answer with JSON only: {"classifications": [{"id": <item id>, "category": '
        '"<category path>", "confidence": <number from 0 to 1>}]}, one entry per item, '
        "using the category paths exactly as listed."
    )


def user_prompt(items: Sequence[ItemText]) -> str:
    return json.dumps(
        [
            {
                "id": item.item_id,
                "name": item.name,
                "brand": item.brand,
                "category": item.category,
                "description": (item.description or "")[:DESCRIPTION_CHARS],
            }
            for item in items
        ],
        ensure_ascii=False,
    )


class OpenAIClassifier:
    """Batches items into chat-completions requests; see the module docstring."""

    name = "openai"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        taxonomy: Taxonomy | None = None,
        batch_size: int = 20,
        timeout_seconds: float = 30.0,
        max_retries: int = 4,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ClassifierError(f"classifier base URL must be http(s): {base_url!r}")
        self.taxonomy = taxonomy or load_taxonomy()
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.version = f"{model}/{PROMPT_VERSION}/{self.taxonomy.version}"
        self.batch_size = batch_size
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._api_key = api_key
        self._sleep = sleep
        self.requests_made = 0  # attempts, including retries (reported as metadata)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClassifier(url={self.url!r}, model={self.model!r})"

    def classify(self, items: Sequence[ItemText]) -> list[Outcome]:
        if not items:
            return []
        body = {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": system_prompt(self.taxonomy)},
                {"role": "user", "content": user_prompt(items)},
            ],
        }
        payload = self._post(body)
        ids = [item.item_id for item in items]
        try:
            response = json.loads(payload)
            content = response["choices"][0]["message"]["content"]
            return parse_answer(content, ids, self.taxonomy)
        except ValueError as error:  # includes AnswerError
            reason = str(error) if isinstance(error, AnswerError) else "response is not JSON"
        except (KeyError, IndexError, TypeError):
            reason = "response has no choices[0].message.content"
        return [Failed(item_id, f"malformed answer: {reason}") for item_id in ids]

    def _post(self, body: dict) -> bytes:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.delay(attempt, retry_after))
            self.requests_made += 1
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                detail = error.read()[:200].decode("utf-8", "replace")
                if error.code not in RETRYABLE_STATUSES:
                    raise ClassifierError(
                        f"{self.url} answered HTTP {error.code} (not retried): {detail}"
                    ) from error
                last, retry_after = f"HTTP {error.code}", error.headers.get("Retry-After")
                continue
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
                retry_after = None
                continue
            return payload
        raise ClassifierUnavailable(
            f"{self.url} (model {self.model}) failed {self.max_retries + 1} times; last: {last}"
        )

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry `attempt` (1, 2, ...): exponential, at least the
        server's `Retry-After` (in seconds), never more than the cap."""
        delay = self.backoff_seconds * 2 ** (attempt - 1)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_seconds)
