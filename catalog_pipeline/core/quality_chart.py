"""The audit's picture: invalid-row rate per source per scrape day, as a small PNG.

Rendered with matplotlib's Agg backend (no display needed); the Dagster layer embeds it in
markdown metadata as a data URI, so the UI shows it next to the per-source table.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime

MAX_SERIES = 8  # more lines than this are unreadable; the rest are summed as "other sources"


def daily_invalid_rates(
    files: Iterable[tuple[str, datetime, int, int]],
) -> dict[str, list[tuple[date, float]]]:
    """(source, observed_at, rows_total, rows_invalid) per file → per source, per day rate.

    Sources beyond the `MAX_SERIES` largest (by rows) are merged into "other sources".
    """
    totals: dict[str, dict[date, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    volume: dict[str, int] = defaultdict(int)
    for source, observed_at, rows_total, rows_invalid in files:
        cell = totals[source][observed_at.date()]
        cell[0] += rows_total
        cell[1] += rows_invalid
        volume[source] += rows_total
    keep = set(sorted(volume, key=lambda s: (-volume[s], s))[:MAX_SERIES])
    merged: dict[str, dict[date, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for source, days in totals.items():
        name = source if source in keep else "other sources"
        for day, (rows_total, rows_invalid) in days.items():
            merged[name][day][0] += rows_total
            merged[name][day][1] += rows_invalid
    return {
        source: [
            (day, rows_invalid / rows_total if rows_total else 0.0)
            for day, (rows_total, rows_invalid) in sorted(days.items())
        ]
        for source, days in sorted(merged.items())
    }


def render_invalid_rate_chart(
    series: dict[str, list[tuple[date, float]]], title: str = "Invalid rows per scrape day"
) -> bytes:
    """A PNG line chart of the invalid rate (%) per source over time."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.2), dpi=90)
    try:
        if not series:
            axes.text(0.5, 0.5, "no completed files yet", ha="center", va="center")
            axes.set_axis_off()
        for source, points in series.items():
            days = [day for day, _ in points]
            rates = [rate * 100 for _, rate in points]
            axes.plot(days, rates, marker="o", markersize=3, linewidth=1.5, label=source)
        if series:
            axes.set_ylabel("invalid rows (%)")
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
            axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        axes.set_title(title, fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
