"""Classification core: the shipped taxonomy, the keyword classifier's precision on a labelled
sample, strict parsing of model answers, and the OpenAI-compatible client against a local
chat-completions server (batches, backoff on 429/5xx, no retries on other 4xx)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from catalog_pipeline.core.classification import (
    UNCLASSIFIED,
    AnswerError,
    Classified,
    ClassifierError,
    Failed,
    ItemText,
    KeywordClassifier,
    classifier_key,
    classify_in_batches,
    load_taxonomy,
    parse_answer,
    tokens,
)
from catalog_pipeline.core.openai_classifier import ClassifierUnavailable, OpenAIClassifier
from tests.chat_server import ChatServer, completion

FIXTURES = Path(__file__).parent / "fixtures"
# `labelled_items.csv` (237 items) was written first and the taxonomy tuned while looking at
# it; `holdout_items.csv` (80 items) was written after the taxonomy was frozen and has never
# been tuned against, so its numbers are the honest estimate (lower floors).
SAMPLES = {
    "labelled_items.csv": {"precision": 0.85, "accuracy": 0.9, "size": 200},
    "holdout_items.csv": {"precision": 0.8, "accuracy": 0.85, "size": 75},
}
TAXONOMY = load_taxonomy()


def item(item_id: int, name: str, category: str | None = None, description: str | None = None):
    return ItemText(item_id, f"SKU-{item_id}", name, None, category, description, f"h{item_id}")


def labelled_sample(name: str = "labelled_items.csv") -> list[tuple[ItemText, str]]:
    with (FIXTURES / name).open(encoding="utf-8", newline="") as handle:
        return [
            (
                ItemText(
                    index,
                    f"L-{index}",
                    row["name"],
                    row["brand"] or None,
                    row["category"] or None,
                    row["description"] or None,
                    "",
                ),
                row["label"],
            )
            for index, row in enumerate(csv.DictReader(handle))
        ]


def test_the_shipped_taxonomy_loads_with_unique_paths_and_usable_keywords():
    assert TAXONOMY.version
    assert len(TAXONOMY.paths) == len(set(TAXONOMY.paths)) >= 12
    assert {path.split("/")[0] for path in TAXONOMY.paths} >= {
        "outdoor",
        "apparel",
        "electronics",
        "media",
    }
    for category in TAXONOMY.categories:
        for keyword in category.keywords:
            assert tokens(keyword), (category.path, keyword)
        for synonyms in category.synonyms.values():
            assert all(tokens(synonym) for synonym in synonyms)
    assert TAXONOMY.is_answer(UNCLASSIFIED) and not TAXONOMY.is_answer("kitchen/sinks")


def test_a_taxonomy_with_synonyms_of_an_unknown_keyword_is_refused():
    bad = {
        "version": "x",
        "categories": [{"path": "a/b", "keywords": {"tent": 3}, "synonyms": {"tarp": ["fly"]}}],
    }
    with pytest.raises(ValueError, match="unknown keywords"):
        load_taxonomy(json.dumps(bad))


def test_tokens_ignore_case_accents_punctuation_and_simple_plurals():
    assert tokens("Tents & Shelters") == ["tent", "shelter"]
    assert tokens("Crème BRÛLÉE t-shirts") == ["creme", "brulee", "t", "shirt"]
    assert tokens("Batteries, boxes; glasses, series") == ["battery", "box", "glasses", "series"]
    assert tokens(None) == [] and tokens("") == []


def test_keyword_classifier_uses_name_category_brand_and_description():
    classifier = KeywordClassifier()
    assert classifier_key(classifier) == f"keyword@{TAXONOMY.version}"
    by_name = classifier.classify_one(item(1, "Nordwand 2-person dome tent"))
    assert (by_name.category, by_name.confidence > 0.5) == ("outdoor/tents", True)
    # The head noun of a name decides between two product words: a backpack for cameras.
    assert classifier.classify_one(item(2, "Camera backpack 20 L")).category == (
        "outdoor/backpacks"
    )
    # A book about cameras is a book: a decisive format word in the description.
    guide = item(3, "Camera field guide", description="Paperback, 320 pages, ISBN 978-0")
    assert classifier.classify_one(guide).category == "media/books"
    assert classifier.classify_one(item(4, "Thing", category="Audio > Headphones")).category == (
        "electronics/audio"
    )


def test_keyword_classifier_says_unclassified_when_weak_or_unknown():
    classifier = KeywordClassifier()
    nothing = classifier.classify_one(item(1, "Garden hose 25 m", description="Kink-free hose"))
    assert nothing == Classified(1, UNCLASSIFIED, 0.0)
    # One weak mention in the description only: below the score threshold.
    weak = classifier.classify_one(item(2, "Gift voucher", description="for a tent"))
    assert weak.category == UNCLASSIFIED and weak.confidence > 0


def test_keyword_classifier_is_deterministic():
    sample = [text for text, _ in labelled_sample()]
    assert KeywordClassifier().classify(sample) == KeywordClassifier().classify(sample)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_keyword_classifier_precision_per_category_on_labelled_samples(name):
    floors = SAMPLES[name]
    sample = labelled_sample(name)
    assert len(sample) >= floors["size"]
    labels = Counter(label for _, label in sample)
    assert set(labels) - {UNCLASSIFIED} == set(TAXONOMY.paths)
    predicted: Counter = Counter()
    correct: Counter = Counter()
    classifier = KeywordClassifier()
    for text, label in sample:
        category = classifier.classify_one(text).category
        predicted[category] += 1
        correct[category] += category == label
    print(f"\n{name}: keyword classifier {classifier.version} on {len(sample)} labelled items")
    print(f"{'category':24} {'labelled':>8} {'predicted':>9} {'precision':>9} {'recall':>7}")
    precision = {}
    for category in sorted(labels):
        precision[category] = correct[category] / predicted[category] if predicted[category] else 0
        recall = correct[category] / labels[category]
        print(
            f"{category:24} {labels[category]:8} {predicted[category]:9} "
            f"{precision[category]:9.2f} {recall:7.2f}"
        )
    accuracy = sum(correct.values()) / len(sample)
    print(f"accuracy {accuracy:.3f}")
    assert accuracy >= floors["accuracy"]
    # `unclassified` is an abstention, not a category: its precision is reported only.
    categories = {c: p for c, p in precision.items() if c != UNCLASSIFIED}
    assert all(value >= floors["precision"] for value in categories.values()), precision


# --- strict parsing of answers ------------------------------------------------------------


def answer(*entries: dict) -> str:
    return json.dumps({"classifications": list(entries)})


def test_parse_answer_accepts_taxonomy_categories_and_unclassified():
    content = answer(
        {"id": 1, "category": "outdoor/tents", "confidence": 0.93},
        {"id": "2", "category": UNCLASSIFIED, "confidence": 0},
    )
    assert parse_answer(content, [1, 2], TAXONOMY) == [
        Classified(1, "outdoor/tents", 0.93),
        Classified(2, UNCLASSIFIED, 0.0),
    ]


def test_parse_answer_fails_off_taxonomy_bad_confidence_missing_and_duplicate_items():
    content = answer(
        {"id": 1, "category": "kitchen/sinks", "confidence": 0.9},
        {"id": 2, "category": "outdoor/tents", "confidence": 1.7},
        {"id": 3, "category": "outdoor/tents", "confidence": "high"},
        {"id": 4, "category": "outdoor/tents", "confidence": True},
        {"id": 5, "category": "Outdoor/Tents", "confidence": 0.5},
        {"id": 6, "category": "media/books", "confidence": 0.5},
        {"id": 6, "category": "media/books", "confidence": 0.5},
        {"id": 99, "category": "media/books", "confidence": 0.5},  # not asked: ignored
        {"category": "media/books"},
    )
    outcomes = parse_answer(content, [1, 2, 3, 4, 5, 6, 7], TAXONOMY)
    assert all(isinstance(outcome, Failed) for outcome in outcomes)
    reasons = {outcome.item_id: outcome.reason for outcome in outcomes}
    assert "not in taxonomy" in reasons[1] and "not in taxonomy" in reasons[5]
    assert "outside 0..1" in reasons[2]
    assert "not a number" in reasons[3] and "not a number" in reasons[4]
    assert reasons[6] == "answered more than once"
    assert reasons[7] == "missing from the answer"


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"items": []}', '{"classifications": {}}', None, "```json{}"]
)
def test_parse_answer_refuses_an_unreadable_answer(content):
    with pytest.raises(AnswerError):
        parse_answer(content, [1], TAXONOMY)


def test_classify_in_batches_stores_each_batch_before_the_next_and_keeps_them_on_failure():
    stored: list[list[int]] = []

    class Flaky:
        name, version, batch_size = "flaky", "1", 2

        def __init__(self) -> None:
            self.calls = 0

        def classify(self, items):
            self.calls += 1
            if self.calls == 3:
                raise ClassifierUnavailable("endpoint down")
            return [Classified(i.item_id, "outdoor/tents", 0.5) for i in items[:1]] + [
                Failed(i.item_id, "no answer") for i in items[1:]
            ]

    items = [item(index, f"tent {index}") for index in range(6)]
    reported: list[list[int]] = []
    with pytest.raises(ClassifierUnavailable):
        classify_in_batches(
            Flaky(),
            items,
            lambda batch, good: stored.append([g.item_id for g in good]),
            lambda batch, bad: reported.append([b.item_id for b in bad]),
        )
    assert stored == [[0], [2]]  # the first two batches were stored before the failure
    # Only the per-item failures are reported: the outage says nothing about items 4 and 5.
    assert reported == [[1], [3]]
    summary = classify_in_batches(Flaky(), iter(items[:4]), lambda batch, good: None)
    assert (summary.attempted, summary.classified, summary.failed) == (4, 2, 2)
    assert summary.failures == (("SKU-1", "no answer"), ("SKU-3", "no answer"))


# --- the OpenAI-compatible client against a local server ----------------------------------


def client(server: ChatServer, **options) -> tuple[OpenAIClassifier, list[float]]:
    sleeps: list[float] = []
    defaults = {"api_key": "sk-test-secret", "batch_size": 2, "backoff_seconds": 0.5}
    classifier = OpenAIClassifier(
        base_url=server.base_url, model="test-model", sleep=sleeps.append, **(defaults | options)
    )
    return classifier, sleeps


def test_openai_classifier_sends_a_batch_and_parses_the_answer():
    items = [
        item(1, "Dome tent", category="outdoor/tents"),
        item(2, "Mystery box", category="Misc"),
    ]
    with ChatServer() as server:
        classifier, sleeps = client(server)
        outcomes = classifier.classify(items)
    assert outcomes == [Classified(1, "outdoor/tents", 0.9), Classified(2, UNCLASSIFIED, 0.9)]
    assert sleeps == [] and len(server.requests) == 1
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-secret"
    body = request["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0
    assert "outdoor/tents" in body["messages"][0]["content"]
    assert [entry["id"] for entry in server.items_asked()] == [1, 2]
    assert classifier_key(classifier) == f"openai@test-model/p1/{TAXONOMY.version}"
    assert "sk-test-secret" not in repr(classifier)


def test_openai_classifier_retries_429_and_5xx_with_exponential_backoff():
    with ChatServer() as server:
        server.script = [
            (429, b'{"error": "rate limited"}', {}),
            (503, b"unavailable", {}),
            (429, b'{"error": "slow down"}', {"Retry-After": "7"}),
        ]
        classifier, sleeps = client(server, max_retries=4)
        outcomes = classifier.classify([item(1, "Tent", category="outdoor/tents")])
    assert outcomes == [Classified(1, "outdoor/tents", 0.9)]
    assert server.statuses == [429, 503, 429, 200]
    assert sleeps == [0.5, 1.0, 7.0]  # doubling, then at least the server's Retry-After
    assert classifier.requests_made == 4


def test_openai_classifier_gives_up_after_its_retries_with_a_clear_error():
    with ChatServer() as server:
        server.script = [(500, b"boom", {})] * 10
        classifier, sleeps = client(server, max_retries=2, max_backoff_seconds=0.75)
        with pytest.raises(ClassifierUnavailable, match="failed 3 times; last: HTTP 500") as info:
            classifier.classify([item(1, "Tent")])
    assert len(server.requests) == 3 and sleeps == [0.5, 0.75]
    assert "sk-test-secret" not in str(info.value)


def test_openai_classifier_does_not_retry_other_client_errors():
    with ChatServer() as server:
        server.script = [(401, b'{"error": "invalid api key"}', {})]
        classifier, sleeps = client(server)
        with pytest.raises(ClassifierError, match="HTTP 401 \\(not retried\\)"):
            classifier.classify([item(1, "Tent")])
    assert len(server.requests) == 1 and sleeps == []


def test_openai_classifier_retries_a_timeout():
    with ChatServer() as server:
        server.stalls = [1.0]  # the first request outlives the client's timeout
        classifier, sleeps = client(server, timeout_seconds=0.3)
        outcomes = classifier.classify([item(1, "Tent", category="outdoor/tents")])
    assert outcomes == [Classified(1, "outdoor/tents", 0.9)]
    assert classifier.requests_made == 2 and sleeps == [0.5]


def test_openai_classifier_turns_a_malformed_answer_into_failed_items():
    not_json = completion("Sure! Here are the categories: tents")
    with ChatServer() as server:
        server.script = [(200, not_json, {}), (200, b"<html>oops</html>", {})]
        classifier, _ = client(server)
        first = classifier.classify([item(1, "Tent"), item(2, "Mug")])
        second = classifier.classify([item(3, "Boot")])
    assert [type(outcome) for outcome in first + second] == [Failed, Failed, Failed]
    assert all("malformed answer" in outcome.reason for outcome in first + second)


def test_openai_classifier_refuses_a_base_url_that_is_not_http():
    with pytest.raises(ClassifierError, match="must be http"):
        OpenAIClassifier(base_url="file:///etc/passwd")
