"""The item classifier: `keyword` (offline, deterministic, the default) or `openai` (any
OpenAI-compatible chat-completions endpoint), chosen by the `CLASSIFIER` variable."""

from __future__ import annotations

import dagster as dg

from catalog_pipeline.core.classification import Classifier, ClassifierError, KeywordClassifier
from catalog_pipeline.core.openai_classifier import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    OpenAIClassifier,
)
from catalog_pipeline.settings import CLASSIFIER

KINDS = ("keyword", "openai")


class ClassifierResource(dg.ConfigurableResource):
    """Which classifier labels catalog items, and how the `openai` one calls its endpoint."""

    kind: str = "keyword"
    openai_base_url: str = DEFAULT_BASE_URL
    openai_model: str = DEFAULT_MODEL
    openai_api_key: str | None = None
    batch_size: int = 20  # items per chat-completions request
    timeout_seconds: int = 30
    max_retries: int = 4
    backoff_seconds: float = 1.0  # first retry delay; doubles per retry (capped at 30 s)

    def build(self) -> Classifier:
        kind = self.kind.strip().lower()
        if kind == "keyword":
            return KeywordClassifier()
        if kind == "openai":
            return OpenAIClassifier(
                base_url=self.openai_base_url,
                model=self.openai_model,
                api_key=self.openai_api_key,
                batch_size=self.batch_size,
                timeout_seconds=self.timeout_seconds,
                max_retries=self.max_retries,
                backoff_seconds=self.backoff_seconds,
            )
        raise ClassifierError(f"{CLASSIFIER}={self.kind!r}: expected one of {', '.join(KINDS)}")
