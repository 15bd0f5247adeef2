"""Full-snapshot sources: which sources list their whole catalog in every file, so an item
missing from a newer completed file has been delisted, and how much may go at once."""

from __future__ import annotations

from dataclasses import dataclass

from catalog_pipeline.core.errors import ConfigurationError

__all__ = ["DEFAULT_HOLD_PERCENT", "DEFAULT_HOLD_SHARE", "SnapshotPolicy"]

# More than this share of a source's listed items missing from one file is held, not
# delisted: a scrape that broke halfway must not empty the catalog.
DEFAULT_HOLD_PERCENT = 30
DEFAULT_HOLD_SHARE = DEFAULT_HOLD_PERCENT / 100


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """`sources`: source names (`*` for every source); `hold_share`: the largest share of
    a source's listed items one file may delist."""

    sources: frozenset[str] = frozenset()
    hold_share: float = DEFAULT_HOLD_SHARE

    def __post_init__(self) -> None:
        if not 0 < self.hold_share <= 1:
            raise ConfigurationError(
                "the delisting hold limit (CATALOG_DELIST_HOLD_PERCENT) must be above 0 % and "
                f"at most 100 % of a source's listed items, got {self.hold_share:.0%}"
            )

    @classmethod
    def parse(cls, sources: str | None, hold_share: float = DEFAULT_HOLD_SHARE) -> SnapshotPolicy:
        """From `CATALOG_FULL_SNAPSHOT_SOURCES`' form: comma-separated names, blanks ignored."""
        names = frozenset(name.strip() for name in (sources or "").split(",") if name.strip())
        return cls(names, hold_share)

    def applies_to(self, source: str) -> bool:
        return "*" in self.sources or source in self.sources
