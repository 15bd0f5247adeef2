"""`catalog_quality`: the per-source audit of the whole catalog, with one WARN check per flag."""

import base64
import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from catalog_pipeline.assets.ingest import CATALOG_ITEMS, INVALID_ITEM_LOGS
from catalog_pipeline.core.quality import (
    CHECKS,
    NULLABLE_FIELDS,
    QualityRules,
    SourceAudit,
    audit,
    flagged_by_check,
)
from catalog_pipeline.core.quality_chart import daily_invalid_rates, render_invalid_rate_chart
from catalog_pipeline.db.quality import completed_file_rates, source_stats
from catalog_pipeline.resources.catalog import CatalogDatabase

CATALOG_QUALITY = dg.AssetKey("catalog_quality")
CHART_DAYS = 90
_DEFAULTS = QualityRules()


class QualityConfig(dg.Config):
    """Thresholds of the audit (defaults in `catalog_pipeline.core.quality.QualityRules`)."""

    low_price_sources: list[str] = []  # sources whose low median price is expected
    low_median_price: float = _DEFAULTS.low_median_price
    null_share: float = _DEFAULTS.null_share
    decimal_bug_share: float = _DEFAULTS.decimal_bug_share
    bad_weight_share: float = _DEFAULTS.bad_weight_share
    stale_days: int = _DEFAULTS.stale_days
    now: str | None = None  # ISO timestamp to audit "as of" (reproducing a past audit)

    def rules(self) -> QualityRules:
        return QualityRules(
            decimal_bug_share=self.decimal_bug_share,
            low_median_price=self.low_median_price,
            low_price_sources=frozenset(self.low_price_sources),
            null_share=self.null_share,
            bad_weight_share=self.bad_weight_share,
            stale_days=self.stale_days,
        )

    def as_of(self) -> datetime:
        if self.now is None:
            return datetime.now(UTC)
        moment = datetime.fromisoformat(self.now)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def source_table(audits: list[SourceAudit]) -> dg.TableMetadataValue:
    columns = [
        dg.TableColumn("source", "string"),
        dg.TableColumn("flags", "string"),
        dg.TableColumn("items", "int"),
        dg.TableColumn("median_price", "float"),
        *(dg.TableColumn(f"null_{name}_%", "float") for name in NULLABLE_FIELDS),
        dg.TableColumn("decimal_bug", "int"),
        dg.TableColumn("bad_weight", "int"),
        dg.TableColumn("empty_name", "int"),
        dg.TableColumn("files_completed", "int"),
        dg.TableColumn("last_scrape", "string"),
        dg.TableColumn("invalid_%", "float"),
    ]
    records = []
    for entry in audits:
        stats = entry.stats
        last = stats.last_completed_observed_at
        records.append(
            dg.TableRecord(
                {
                    "source": stats.source,
                    "flags": ", ".join(entry.flags) or "ok",
                    "items": stats.items,
                    "median_price": None
                    if stats.median_price is None
                    else round(stats.median_price, 2),
                    **{
                        f"null_{name}_%": round(100 * stats.null_share(name), 1)
                        for name in NULLABLE_FIELDS
                    },
                    "decimal_bug": stats.decimal_bug,
                    "bad_weight": stats.bad_weight,
                    "empty_name": stats.empty_name,
                    "files_completed": stats.files_completed,
                    "last_scrape": last.strftime("%Y-%m-%d %H:%M") if last else "never",
                    "invalid_%": round(100 * stats.invalid_rate, 2),
                }
            )
        )
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


def _chart(png: bytes) -> dg.MarkdownMetadataValue:
    encoded = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"![invalid rate per source](data:image/png;base64,{encoded})")


@dg.asset(
    key=CATALOG_QUALITY,
    deps=[CATALOG_ITEMS, INVALID_ITEM_LOGS],
    group_name="quality",
    pool="catalog_db",
    check_specs=[
        dg.AssetCheckSpec(name, asset=CATALOG_QUALITY, description=description)
        for name, description in CHECKS.items()
    ],
    # After ingests settle (not after every chunk of a busy hour) and daily by schedule.
    automation_condition=(
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after ingests settle"),
)
def catalog_quality(
    context: dg.AssetExecutionContext, config: QualityConfig, catalog_db: CatalogDatabase
):
    """Per-source audit of the whole catalog: suspicious prices, null-heavy fields, bad
    weights, placeholder names and sources that stopped delivering; each flag warns a check."""
    started = time.monotonic()
    engine = catalog_db.engine()
    now = config.as_of()
    rules = config.rules()
    audits = audit(source_stats(engine, rules), rules, now)
    rates = completed_file_rates(engine, now - timedelta(days=CHART_DAYS))
    chart = render_invalid_rate_chart(
        daily_invalid_rates((f.source, f.observed_at, f.rows_total, f.rows_invalid) for f in rates)
    )
    flagged = flagged_by_check(audits)
    for name, sources in flagged.items():
        for source, flags in sources.items():
            context.log.warning(f"{name}: source {source!r} flagged {', '.join(flags)}")
    yield dg.MaterializeResult(
        metadata={
            "sources": len(audits),
            "flagged_sources": sum(1 for entry in audits if entry.flags),
            "dagster/row_count": sum(entry.stats.items for entry in audits),
            "flags": dg.MetadataValue.json({e.source: list(e.flags) for e in audits if e.flags}),
            "per_source": source_table(audits),
            "invalid_rate_chart": _chart(chart),
            "as_of": now.isoformat(),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    for name, sources in flagged.items():
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key=CATALOG_QUALITY,
            passed=not sources,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "flagged_sources": len(sources),
                "sources": dg.MetadataValue.json(sources),
            },
            description=None
            if not sources
            else f"{len(sources)} source(s) flagged: {', '.join(sorted(sources))}",
        )
