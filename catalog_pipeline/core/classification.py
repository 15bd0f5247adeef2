"""Item classification: the taxonomy, the small `Classifier` interface, the offline keyword
classifier, and the strict parser of a model's answer.

A classifier is identified by `name@version`; that key is stored with every result, so
switching classifiers (or bumping the taxonomy version) never mixes results. Every
classifier answers with `unclassified` rather than guessing when it is not confident, and
reports per-item failures (`Failed`) instead of storing anything it could not validate.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from typing import Protocol

from catalog_pipeline.core.errors import CatalogError

UNCLASSIFIED = "unclassified"
MAX_KEY_LENGTH = 100  # item_classifications.classifier is String(100)


class ClassifierError(CatalogError):
    """A classifier cannot work at all (bad configuration, endpoint down after retries)."""


@dataclass(frozen=True, slots=True)
class Category:
    path: str
    label: str
    keywords: Mapping[str, int]  # keyword -> weight
    synonyms: Mapping[str, tuple[str, ...]]  # keyword -> its synonyms (same weight)


@dataclass(frozen=True, slots=True)
class Taxonomy:
    version: str
    categories: tuple[Category, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(category.path for category in self.categories)

    def is_answer(self, category: str) -> bool:
        """A category path of this taxonomy, or `unclassified`."""
        return category == UNCLASSIFIED or category in self.paths


def load_taxonomy(text: str | None = None) -> Taxonomy:
    """The taxonomy shipped with the package (`core/taxonomy.json`), or one given as JSON."""
    if text is None:
        text = resources.files("catalog_pipeline.core").joinpath("taxonomy.json").read_text("utf-8")
    data = json.loads(text)
    categories = []
    for entry in data["categories"]:
        keywords = {str(word): int(weight) for word, weight in entry["keywords"].items()}
        synonyms = {
            str(word): tuple(str(s) for s in others)
            for word, others in entry.get("synonyms", {}).items()
        }
        unknown = set(synonyms) - set(keywords)
        if unknown:
            raise ValueError(f"{entry['path']}: synonyms for unknown keywords {sorted(unknown)}")
        categories.append(Category(entry["path"], entry.get("label", ""), keywords, synonyms))
    paths = [category.path for category in categories]
    if len(set(paths)) != len(paths) or UNCLASSIFIED in paths:
        raise ValueError("taxonomy paths must be unique and must not be 'unclassified'")
    return Taxonomy(str(data["version"]), tuple(categories))


@dataclass(frozen=True, slots=True)
class ItemText:
    """What a classifier sees of an item; `content_hash` is stored as the input hash."""

    item_id: int
    sku: str
    name: str
    brand: str | None
    category: str | None
    description: str | None
    content_hash: str


@dataclass(frozen=True, slots=True)
class Classified:
    item_id: int
    category: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The classifier gave no usable answer for this item; nothing is stored for it."""

    item_id: int
    reason: str


Outcome = Classified | Failed


class Classifier(Protocol):
    """Classifies a batch of items; one outcome per item, in any order."""

    name: str
    version: str
    batch_size: int

    def classify(self, items: Sequence[ItemText]) -> list[Outcome]: ...


def classifier_key(classifier: Classifier) -> str:
    """The stored key: `name@version`."""
    key = f"{classifier.name}@{classifier.version}"
    if len(key) > MAX_KEY_LENGTH:
        raise ClassifierError(f"classifier key {key!r} is longer than {MAX_KEY_LENGTH} characters")
    return key


# --- text normalisation shared by the keyword matcher -------------------------------------

_NON_WORD = re.compile(r"[^\w]+")
_KEEP_S = ("ss", "us", "is")
_IRREGULAR = {"series": "series", "species": "species", "glasses": "glasses"}


def _singular(token: str) -> str:
    if token in _IRREGULAR:
        return _IRREGULAR[token]
    if len(token) <= 3 or not token.endswith("s") or token.endswith(_KEEP_S):
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith(("ches", "shes", "xes", "sses")):
        return token[:-2]
    return token[:-1]


def tokens(text: str | None) -> list[str]:
    """Lower-case, accent-free, singular word tokens ("Tents & Shelters" → tent, shelter)."""
    if not text:
        return []
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = plain.replace("'", "")  # "children's" → "childrens", not "children s"
    return [_singular(token) for token in _NON_WORD.sub(" ", plain).replace("_", " ").split()]


# --- the keyword classifier ---------------------------------------------------------------

FIELD_WEIGHTS = {"name": 3, "category": 3, "brand": 2, "description": 1}
HEAD_BONUS = 2  # the right-most product term of a name is its head noun ("camera backpack")
MIN_SCORE = 6.0
MIN_CONFIDENCE = 0.4
CONFIDENCE_SMOOTHING = 4.0


@dataclass(frozen=True, slots=True)
class _Phrase:
    words: tuple[str, ...]
    scores: tuple[tuple[str, int], ...]  # (category path, weight)


@dataclass
class _PhraseIndex:
    by_first: dict[str, list[_Phrase]] = field(default_factory=dict)

    @classmethod
    def build(cls, taxonomy: Taxonomy) -> _PhraseIndex:
        scores: dict[tuple[str, ...], dict[str, int]] = {}
        for category in taxonomy.categories:
            for keyword, weight in category.keywords.items():
                for term in (keyword, *category.synonyms.get(keyword, ())):
                    words = tuple(tokens(term))
                    if words:
                        per_category = scores.setdefault(words, {})
                        per_category[category.path] = max(
                            per_category.get(category.path, 0), weight
                        )
        index = cls()
        for words, per_category in scores.items():
            phrase = _Phrase(words, tuple(sorted(per_category.items())))
            index.by_first.setdefault(words[0], []).append(phrase)
        for phrases in index.by_first.values():
            phrases.sort(key=lambda phrase: -len(phrase.words))  # longest match first
        return index

    def matches(self, words: list[str]) -> list[_Phrase]:
        """Non-overlapping phrases in reading order, the longest at each position."""
        found, position = [], 0
        while position < len(words):
            for phrase in self.by_first.get(words[position], ()):
                end = position + len(phrase.words)
                if tuple(words[position:end]) == phrase.words:
                    found.append(phrase)
                    position = end
                    break
            else:
                position += 1
        return found


def _score_field(
    matches: list[_Phrase], weight: int, head_bonus: bool, scores: dict[str, float]
) -> None:
    seen: set[tuple[str, ...]] = set()
    for phrase in matches:
        if phrase.words in seen:  # a keyword counts once per field: no keyword stuffing
            continue
        seen.add(phrase.words)
        for path, keyword_weight in phrase.scores:
            scores[path] = scores.get(path, 0.0) + weight * keyword_weight
    if head_bonus and matches:
        for path, _ in matches[-1].scores:
            scores[path] = scores.get(path, 0.0) + weight * HEAD_BONUS


class KeywordClassifier:
    """Deterministic, offline: weighted keyword and synonym matches over name, category,
    brand and description; `unclassified` when the best category is weak or contested."""

    name = "keyword"
    batch_size = 1000

    def __init__(
        self,
        taxonomy: Taxonomy | None = None,
        min_score: float = MIN_SCORE,
        min_confidence: float = MIN_CONFIDENCE,
    ) -> None:
        self.taxonomy = taxonomy or load_taxonomy()
        self.version = self.taxonomy.version
        self.min_score = min_score
        self.min_confidence = min_confidence
        self._index = _PhraseIndex.build(self.taxonomy)
        self._order = {path: position for position, path in enumerate(self.taxonomy.paths)}

    def scores(self, item: ItemText) -> dict[str, float]:
        """Score per category path (only categories with at least one match)."""
        scores: dict[str, float] = {}
        for field_name, weight in FIELD_WEIGHTS.items():
            matches = self._index.matches(tokens(getattr(item, field_name)))
            _score_field(matches, weight, field_name == "name", scores)
        return scores

    def classify_one(self, item: ItemText) -> Classified:
        scores = self.scores(item)
        if not scores:
            return Classified(item.item_id, UNCLASSIFIED, 0.0)
        # Highest score wins; ties go to the category listed first in the taxonomy.
        ranked = sorted(scores.items(), key=lambda entry: (-entry[1], self._order[entry[0]]))
        best_path, best = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        confidence = round(best / (best + runner_up + CONFIDENCE_SMOOTHING), 3)
        if best < self.min_score or confidence < self.min_confidence:
            return Classified(item.item_id, UNCLASSIFIED, confidence)
        return Classified(item.item_id, best_path, confidence)

    def classify(self, items: Sequence[ItemText]) -> list[Outcome]:
        return [self.classify_one(item) for item in items]


# --- strict parsing of a model's answer ---------------------------------------------------


class AnswerError(ValueError):
    """The whole answer is unusable (not JSON, wrong shape): every item of the batch fails."""


def parse_answer(content: str, item_ids: Iterable[int], taxonomy: Taxonomy) -> list[Outcome]:
    """Validate a model's answer for a batch: `{"classifications": [{"id", "category",
    "confidence"}]}`, one entry per item. Anything else is a `Failed` outcome for the items
    concerned, never a stored category.

    Raises `AnswerError` when the answer as a whole cannot be read.
    """
    expected = list(item_ids)
    try:
        data = json.loads(content)
    except (TypeError, ValueError) as error:
        raise AnswerError(f"answer is not JSON: {error}") from error
    entries = data.get("classifications") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise AnswerError('answer has no "classifications" list')
    outcomes: dict[int, Outcome] = {}
    wanted = set(expected)
    for entry in entries:
        item_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(item_id, str) and item_id.isdigit():
            item_id = int(item_id)
        if not isinstance(item_id, int) or isinstance(item_id, bool) or item_id not in wanted:
            continue  # an id we did not ask about: ignored, it cannot be stored anywhere
        if item_id in outcomes:
            outcomes[item_id] = Failed(item_id, "answered more than once")
            continue
        outcomes[item_id] = _validate_entry(item_id, entry, taxonomy)
    return [
        outcomes.get(item_id, Failed(item_id, "missing from the answer")) for item_id in expected
    ]


def _validate_entry(item_id: int, entry: dict, taxonomy: Taxonomy) -> Outcome:
    category = entry.get("category")
    confidence = entry.get("confidence")
    if not isinstance(category, str) or not taxonomy.is_answer(category):
        return Failed(item_id, f"category {category!r} is not in taxonomy {taxonomy.version}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        return Failed(item_id, f"confidence {confidence!r} is not a number")
    if not 0.0 <= float(confidence) <= 1.0:
        return Failed(item_id, f"confidence {confidence!r} is outside 0..1")
    return Classified(item_id, category, round(float(confidence), 3))


# --- running a classifier over many items -------------------------------------------------


FAILURES_KEPT = 100  # examples of failed items kept for the report (the count is exact)


@dataclass(frozen=True, slots=True)
class ClassificationSummary:
    attempted: int
    classified: int
    failed: int
    failures: tuple[tuple[str, str], ...]  # (sku, reason) of the first failed items


def classify_in_batches(
    classifier: Classifier,
    items: Iterable[ItemText],
    store: Callable[[Sequence[ItemText], list[Classified]], None],
    on_failed: Callable[[Sequence[ItemText], list[Failed]], None] | None = None,
) -> ClassificationSummary:
    """Classify `items` (read lazily) in the classifier's batch size, storing each batch's
    results before asking for the next, so a failure later on never loses (or re-pays for)
    earlier batches.

    `on_failed` hears of the per-item failures of each batch (`Failed`: the classifier
    answered, but not validly for those items), and only of those. A batch that raises
    (`ClassifierError`: the endpoint is down, keeps failing after its retries, refuses the
    key) says nothing about its items: the error ends the run and no item is blamed for it,
    so an outage never fills the failure ledger.
    """
    attempted = classified = failed = 0
    failures: list[tuple[str, str]] = []
    size = max(1, classifier.batch_size)
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        attempted += len(batch)
        skus = {item.item_id: item.sku for item in batch}
        outcomes = classifier.classify(batch)  # an outage raises: nothing recorded, run over
        good, bad = [], []
        for outcome in outcomes:
            if isinstance(outcome, Classified):
                good.append(outcome)
            else:
                bad.append(outcome)
                if len(failures) < FAILURES_KEPT:
                    failures.append((skus[outcome.item_id], outcome.reason))
        if good:
            store(batch, good)
        if bad and on_failed is not None:
            on_failed(batch, bad)
        classified += len(good)
        failed += len(bad)
    return ClassificationSummary(attempted, classified, failed, tuple(failures))
