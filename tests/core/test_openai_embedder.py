"""The OpenAI-compatible embedder against a real local server (`tests/embeddings_server.py`):
batching, the retry rule on 429, 5xx, timeouts and a dead endpoint, configuration errors,
and items the server refuses or answers badly, which fail alone."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from catalog_pipeline.core.embedding.base import EmbedderError
from catalog_pipeline.core.embedding.document import ItemDocument
from catalog_pipeline.core.embedding.openai import OpenAIEmbedder, retry_after_seconds
from catalog_pipeline.core.retry import BUDGET_SETTING, RetryPolicy
from tests.embeddings_server import EmbeddingsServer, error_body, vector_for

KEY = "sk-test-secret"
DIMENSIONS = 16
SHORT = RetryPolicy(budget_seconds=2.0, first_delay=0.01, max_delay=1.5)


def embedder(base_url: str, sleeps: list[float] | None = None, **options) -> OpenAIEmbedder:
    """A client with a short retry budget; given `sleeps`, waits are recorded, not slept."""
    defaults = {"api_key": KEY, "batch_size": 8, "retry_policy": SHORT}
    if sleeps is not None:
        options["sleep"] = sleeps.append
    return OpenAIEmbedder(
        base_url=base_url, model="test-embed", dimensions=DIMENSIONS, **(defaults | options)
    )


def documents(count: int) -> list[ItemDocument]:
    return [ItemDocument(item_id=i, sku=f"SKU-{i}", name=f"Item {i}") for i in range(count)]


def expected(text: str) -> np.ndarray:
    vector = np.asarray(vector_for(text, DIMENSIONS), dtype=np.float32)
    return vector / np.linalg.norm(vector)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_documents_go_out_in_batches_and_come_back_as_unit_vectors_in_order():
    docs = documents(100)
    with EmbeddingsServer(api_key=KEY, reverse=True) as server:
        client = embedder(server.base_url, batch_size=32)
        batch = client.embed_documents(docs)
    assert server.batch_sizes() == [32, 32, 32, 4] and client.requests_made == 4
    assert batch.embedded == tuple(range(100)) and batch.failures == {}
    assert batch.vectors.shape == (100, DIMENSIONS) and batch.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, rtol=1e-6)
    for row, doc in enumerate(docs):  # matched by index although `data` came reversed
        np.testing.assert_allclose(batch.vectors[row], expected(doc.text()), rtol=1e-5)
    request = server.requests[0]
    assert request["path"] == "/v1/embeddings"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"] == {
        "model": "test-embed",
        "input": [doc.text() for doc in docs[:32]],
        "dimensions": DIMENSIONS,
        "encoding_format": "float",
    }
    assert client.key == f"test-embed@{DIMENSIONS}" and client.dimension == DIMENSIONS
    assert KEY not in repr(client)


def test_429_is_retried_waiting_as_long_as_the_server_asks_up_to_the_longest_wait():
    with EmbeddingsServer() as server:
        server.script = [
            (429, error_body("rate limited"), {"Retry-After": "1"}),
            (429, error_body("slow down"), {"Retry-After": "3600"}),
        ]
        sleeps: list[float] = []
        client = embedder(server.base_url, sleeps)
        batch = client.embed_documents(documents(3))
    assert batch.embedded == (0, 1, 2) and batch.failures == {}
    assert server.statuses() == [429, 429, 200] and client.requests_made == 3
    assert sleeps == [1.0, SHORT.max_delay]  # the server's 1 s; 3600 s capped


def test_5xx_answers_are_retried_until_one_succeeds():
    with EmbeddingsServer() as server:
        server.script = [(500, b"boom", {}), (503, b"unavailable", {}), (502, b"gateway", {})]
        client = embedder(server.base_url)
        batch = client.embed_documents(documents(3))
    assert server.statuses() == [500, 503, 502, 200] and client.requests_made == 4
    assert batch.embedded == (0, 1, 2)
    np.testing.assert_allclose(batch.vectors[2], expected("Item 2"), rtol=1e-5)


def test_a_timeout_is_retried():
    with EmbeddingsServer() as server:
        server.stalls = [1.0]  # the first request outlives the client's timeout
        client = embedder(server.base_url, timeout_seconds=0.3)
        batch = client.embed_documents(documents(2))
    assert batch.embedded == (0, 1) and client.requests_made == 2


def test_an_item_the_server_refuses_fails_alone_and_the_rest_of_its_batch_is_embedded():
    docs = documents(10)
    with EmbeddingsServer() as server:
        server.poison = {"Item 5"}
        client = embedder(server.base_url, batch_size=8)
        batch = client.embed_documents(docs)
    assert batch.failures == {
        5: "refused by the embedding endpoint (HTTP 400): input 'Item 5' is too long for the model"
    }
    assert batch.embedded == (0, 1, 2, 3, 4, 6, 7, 8, 9)
    for row, position in enumerate(batch.embedded):
        np.testing.assert_allclose(batch.vectors[row], expected(f"Item {position}"), rtol=1e-5)
    # The batch of 8 is halved until item 5 stands alone; the second batch is untouched.
    assert server.batch_sizes() == [8, 4, 4, 2, 1, 1, 2, 2]


def test_several_refused_items_each_fail_with_the_servers_reason():
    with EmbeddingsServer() as server:
        server.poison = {"Item 0", "Item 6", "Item 7"}
        batch = embedder(server.base_url, batch_size=8).embed_documents(documents(8))
    assert sorted(batch.failures) == [0, 6, 7]
    assert all("HTTP 400" in reason and "too long" in reason for reason in batch.failures.values())
    assert batch.embedded == (1, 2, 3, 4, 5) and batch.vectors.shape == (5, DIMENSIONS)


def test_a_vector_of_the_wrong_length_or_a_missing_one_fails_its_item_alone():
    with EmbeddingsServer() as server:
        server.short = {"Item 2"}
        server.dropped = {"Item 3"}
        client = embedder(server.base_url)
        batch = client.embed_documents(documents(5))
    assert batch.failures == {
        2: f"the embedding has {DIMENSIONS - 1} floats, expected {DIMENSIONS}",
        3: "the endpoint's answer has no embedding for this input",
    }
    assert batch.embedded == (0, 1, 4) and client.requests_made == 1


def test_a_wrong_or_missing_key_fails_at_once_without_retry():
    with EmbeddingsServer(api_key="sk-right") as server:
        for api_key in ("sk-wrong", None):
            sleeps: list[float] = []
            client = embedder(server.base_url, sleeps, api_key=api_key)
            with pytest.raises(EmbedderError, match="answered HTTP 401") as raised:
                client.embed_documents(documents(3))
            assert client.requests_made == 1 and sleeps == []
            assert server.base_url in str(raised.value)
            assert "Incorrect API key provided" in str(raised.value)
            assert "sk-wrong" not in str(raised.value)
    assert server.statuses() == [401, 401]


def test_a_wrong_url_or_model_fails_at_once_without_retry():
    with EmbeddingsServer() as server:
        client = embedder(server.base_url.replace("/v1", "/v2"))
        with pytest.raises(EmbedderError, match=r"/v2/embeddings .*HTTP 404.*base URL"):
            client.embed_documents(documents(2))
        server.script = [(403, error_body("model not allowed for this key"), {})]
        with pytest.raises(EmbedderError, match="HTTP 403.*model not allowed"):
            embedder(server.base_url).embed_query("tent")
    assert server.statuses() == [404, 403]


def test_an_endpoint_that_is_down_fails_the_run_after_the_retry_budget():
    policy = RetryPolicy(budget_seconds=1.5, first_delay=0.05, max_delay=0.2)
    client = embedder(f"http://127.0.0.1:{closed_port()}/v1", retry_policy=policy)
    started = time.monotonic()
    with pytest.raises(EmbedderError, match="unavailable.*Connection refused") as raised:
        client.embed_documents(documents(3))
    elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 3.0 and client.requests_made > 3
    assert "retry budget" in str(raised.value)


def test_without_a_policy_the_retry_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(BUDGET_SETTING, "0.5")
    client = embedder(f"http://127.0.0.1:{closed_port()}/v1", retry_policy=None)
    started = time.monotonic()
    with pytest.raises(EmbedderError, match="unavailable"):
        client.embed_query("tent")
    assert time.monotonic() - started < 1.5


def test_an_answer_outside_the_contract_fails_the_run_without_blaming_items():
    with EmbeddingsServer() as server:
        server.script = [(200, b"<html>login</html>", {})]
        with pytest.raises(EmbedderError, match="without a `data` list.*<html>login"):
            embedder(server.base_url).embed_documents(documents(2))


def test_embed_query_gives_one_unit_vector():
    with EmbeddingsServer(api_key=KEY) as server:
        client = embedder(server.base_url)
        vector = client.embed_query("Dome tent")
        blank = client.embed_query("   ")  # nothing to search for: no request
        server.poison = {"x" * 50}
        with pytest.raises(EmbedderError, match="refused the search text.*too long"):
            client.embed_query("x" * 50)
    assert vector.shape == (DIMENSIONS,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector, expected("Dome tent"), rtol=1e-5)
    assert not blank.any() and blank.shape == (DIMENSIONS,)
    assert server.batch_sizes() == [1, 1]


def test_a_blank_document_fails_without_a_request():
    docs = [ItemDocument(item_id=1, sku="SKU-1", name="  "), *documents(1)]
    with EmbeddingsServer() as server:
        batch = embedder(server.base_url).embed_documents(docs)
    assert batch.failures == {0: "empty document: nothing to embed"} and batch.embedded == (1,)
    assert server.batch_sizes() == [1]


def test_configuration_is_checked_when_the_embedder_is_made():
    with pytest.raises(EmbedderError, match="must be http"):
        OpenAIEmbedder("file:///etc/passwd", None, "m", 8)
    with pytest.raises(EmbedderError, match="must be positive"):
        OpenAIEmbedder("http://127.0.0.1:1/v1", None, "m", 0)
    with pytest.raises(EmbedderError, match="embedder key"):
        OpenAIEmbedder("http://127.0.0.1:1/v1", None, "a model with spaces", 8)


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) == 0.0 and retry_after_seconds("soon") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds("nan") == 0.0 and retry_after_seconds("-3") == 0.0
