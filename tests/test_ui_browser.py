"""The Dagster UI in a real browser: `dagster dev` from the repository root on a temporary
instance, the demo scrapes in a local bucket ingested by `new_csv_objects_sensor` (not by
the test), and headless Debian Chromium driven by Playwright, clicking through what
docs/architecture.md promises: the lineage groups, `catalog_items`' partitions, checks and
a rejected file's reason, the sensor's ticks, and a two-partition backfill launched by
clicking. Each test saves a screenshot under docs/images/; run data is read through the
webserver's GraphQL API, nothing is mocked.

Playwright never downloads a browser here: Chromium is Debian's (`.ci/run` installs it).
Without it or Playwright the module skips locally and fails in CI.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from catalog_pipeline.assets.partitions import partition_key_for
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.naming import is_csv_key
from catalog_pipeline.core.samples import demo_objects
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.settings import BUCKET_URL, DATABASE_URL
from tests.ui_support import REPO, DagsterDev, copy_instance_config

pytestmark = pytest.mark.slow
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IMAGES = REPO / "docs" / "images"
SENSOR = "new_csv_objects_sensor"
DEMO_LARGE_ROWS = 300  # the demo's "large" file, kept small: the test is about the UI
STARTUP_TIMEOUT = 120
INGEST_TIMEOUT = 180
BACKFILL_TIMEOUT = 180
UI_TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1440, "height": 900}
CHECK_STATUS = re.compile(r"Succeeded|Failed|Not evaluated|In progress|Skipped")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}: the browser test never skips in CI (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; checked before anything slow starts."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    path = shutil.which("chromium")
    if not path:
        _unavailable("no `chromium` on PATH (apt-get install chromium)")
    return path


class Demo:
    """The running `dagster dev`, the catalog it writes, and what the sensor made of the
    demo scrapes."""

    def __init__(self, dagster: DagsterDev, database_url: str) -> None:
        self.dagster = dagster
        self.engine = make_engine(database_url)
        self.csv_keys = sorted(key for key, _ in demo_objects(DEMO_LARGE_ROWS) if is_csv_key(key))

    def files(self) -> dict[str, tuple[str, str | None]]:
        """object key → (status, rejected reason) of each CSV the catalog recorded."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    source_files.c.object_key,
                    source_files.c.status,
                    source_files.c.rejected_reason,
                )
            ).all()
        return {key: (status, reason) for key, status, reason in rows}

    def accepted(self) -> list[str]:
        return sorted(key for key, (status, _) in self.files().items() if status != "rejected")

    def rejected(self) -> dict[str, str]:
        return {
            key: reason or ""
            for key, (status, reason) in self.files().items()
            if status == "rejected"
        }

    def ingested(self) -> bool:
        """Every demo CSV is recorded as completed or rejected, and the sensor's runs (one
        per accepted file) all succeeded."""
        files = self.files()
        if sorted(files) != self.csv_keys or any(
            status not in ("completed", "rejected") for status, _ in files.values()
        ):
            return False
        runs = self.dagster.runs("dagster/sensor_name", SENSOR)
        statuses = [run["status"] for run in runs]
        assert not {"FAILURE", "CANCELED"} & set(statuses), runs
        return len(runs) == len(self.accepted()) and all(s == "SUCCESS" for s in statuses)


@pytest.fixture(scope="module")
def demo(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`dagster dev` on a temporary instance whose sensor ingests the demo scrapes."""
    root = tmp_path_factory.mktemp("ui")
    bucket = LocalBucket(root / "bucket")
    for key, data in demo_objects(DEMO_LARGE_ROWS):  # written, not ingested: the sensor does
        bucket.put(key, data() if callable(data) else data)
    database_url = f"sqlite:///{root / 'catalog.sqlite'}"
    home = root / "dagster_home"
    copy_instance_config(home)
    dagster = DagsterDev(home, {BUCKET_URL: bucket.url, DATABASE_URL: database_url})
    try:
        dagster.wait_for(dagster.server_answers, "/server_info to answer", STARTUP_TIMEOUT)
        status = dagster.wait_for(
            lambda: dagster.sensor_status(SENSOR), f"the code location's {SENSOR}", STARTUP_TIMEOUT
        )
        if status != "RUNNING":  # on by default; started here should that ever change
            dagster.start_sensor(SENSOR)
        demo = Demo(dagster, database_url)
        try:
            dagster.wait_for(demo.ingested, "the sensor's ingest runs of the demo", INGEST_TIMEOUT)
            yield demo
        finally:
            demo.engine.dispose()
    finally:
        dagster.stop()


@pytest.fixture(scope="module")
def browser(chromium: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, demo: Demo):
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def open_ui(page, demo: Demo, path: str = "/") -> None:
    """Open a UI page and, when the instance still offers it (first visit of a fresh
    DAGSTER_HOME), dismiss the "Join the Dagster community" modal with Skip."""
    from playwright.sync_api import expect

    show_modal = demo.dagster.should_show_community_modal()
    page.goto(demo.dagster.base_url + path)
    expect(nav_link(page, "Runs")).to_be_visible()
    if show_modal:
        modal = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
        modal.get_by_role("button", name="Skip", exact=True).click()
        expect(modal).to_be_hidden()


def nav_link(page, label: str):
    """A link of the left navigation; its accessible name starts with its icon's name."""
    return page.get_by_role("navigation").get_by_role("link", name=re.compile(rf"(^| ){label}$"))


def count_shown(page, label: str) -> int:
    """N of a Partitions tab status filter shown as "<label> (N)"."""
    from playwright.sync_api import expect

    shown = page.get_by_text(re.compile(rf"^{label} \(\d+\)$"))
    expect(shown).to_be_visible()
    return int(re.search(r"\((\d+)\)", shown.inner_text()).group(1))


def select_partition(page, partition: str) -> None:
    """Click a partition in the Partitions tab's list (long names show middle-truncated)."""
    from playwright.sync_api import expect

    page.get_by_text(partition, exact=True).first.locator("xpath=..").click()
    expect(page).to_have_url(re.compile(r"[?&]partition="))


def pick_partition(page, partition: str, attempts: int = 4) -> None:
    """Pick a partition in the Materialize dialog's partition menu.

    The pick is judged by its tag in the selector, outside the menu: the dialog re-renders
    while it is open and may close the menu (a pick seen in its checkbox can vanish with
    it). So each attempt opens the menu if it is closed, filters it down to the partition
    and clicks the row, found by the full key the UI keeps in `data-tooltip` (the text it
    shows is middle-truncated to the menu's width, which depends on the machine's fonts);
    a row is clicked only while its tag is absent (clicking a picked row unpicks it).
    """
    from playwright.sync_api import Error, expect

    dialog = page.get_by_role("dialog")
    search = page.get_by_placeholder("Filter partitions")
    picked = dialog.locator(f'[data-tooltip="{partition}"]:has([aria-label="close"])')
    row = page.locator(f'label:has([data-tooltip="{partition}"]) [data-tooltip="{partition}"]')
    for _ in range(attempts):
        if picked.is_visible():
            return
        try:
            if not search.is_visible():
                dialog.locator('[aria-label="expand_more"]').first.click(timeout=UI_TIMEOUT_MS // 4)
            search.fill(partition, timeout=UI_TIMEOUT_MS // 4)
            row.click(timeout=UI_TIMEOUT_MS // 4)
            expect(picked).to_be_visible(timeout=UI_TIMEOUT_MS // 2)
        except (Error, AssertionError):
            continue
    expect(picked).to_be_visible()


def screenshot(page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)  # no hover tooltips
    page.screenshot(path=str(IMAGES / name))


def test_lineage_shows_the_asset_groups(page, demo: Demo):
    from playwright.sync_api import expect

    from catalog_pipeline.definitions import defs

    groups = sorted({spec.group_name for spec in defs.resolve_all_asset_specs()})
    assert {"ingest", "quality", "classification", "playcount"} <= set(groups)
    open_ui(page, demo)
    nav_link(page, "Lineage").click()
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    graph = page.locator("svg foreignObject")  # the graph's nodes; the sidebar is a tree
    for group in groups:
        expect(graph.get_by_text(group, exact=True)).to_be_visible()
    expect(graph.get_by_text("fetching statuses")).to_have_count(0)  # then the screenshot
    screenshot(page, "lineage.png")


def test_catalog_items_partitions_show_the_sensor_materializations(page, demo: Demo):
    from playwright.sync_api import expect

    accepted, rejected = demo.accepted(), demo.rejected()
    assert accepted and rejected, demo.files()
    open_ui(page, demo, "/assets/catalog_items")
    page.get_by_role("tab", name="Partitions").click()
    # Every CSV the sensor found is a partition; each one it accepted was materialized
    # by its run (a rejected file's partition may be recorded as materialized too, with
    # `status: rejected`, or be left "Missing").
    expect(
        page.get_by_text(f"{len(demo.csv_keys)} Partitions Selected", exact=True)
    ).to_be_visible()
    expect(page.get_by_text("Failed (0)", exact=True)).to_be_visible()
    materialized = count_shown(page, "Materialized")
    missing = count_shown(page, "Missing")
    assert len(accepted) <= materialized <= len(demo.csv_keys), (materialized, demo.files())
    assert materialized + missing == len(demo.csv_keys), (materialized, missing)
    for key in demo.csv_keys:
        expect(page.get_by_text(partition_key_for(key), exact=True).first).to_be_attached()
    first = partition_key_for(accepted[0])
    select_partition(page, first)
    expect(page.get_by_text("completed", exact=True).first).to_be_visible()
    screenshot(page, "catalog_items_partitions.png")


def test_checks_passed_after_the_sensor_runs(page, demo: Demo):
    """Runs before the backfill test: what the sensor-launched runs left."""
    from playwright.sync_api import expect

    open_ui(page, demo, "/assets/catalog_items")
    page.get_by_role("tab", name="Checks").click()
    checks = page.get_by_placeholder("Filter checks").locator(
        "xpath=ancestor::div[.//*[normalize-space(text())='rows_reconcile']][1]"
    )
    expect(checks).to_be_visible()
    shown = {}
    for name in ("rows_reconcile", "file_accepted"):
        row = (
            checks.locator("div")
            .filter(has=page.get_by_text(name, exact=True))
            .filter(has_text=CHECK_STATUS)
            .last
        )
        expect(row).to_be_visible()
        row.click()
        result = page.get_by_text("Evaluation result", exact=True).locator("xpath=..")
        expect(result).to_be_visible()
        shown[name] = (CHECK_STATUS.search(row.inner_text()).group(0), result.inner_text())
        if name == "rows_reconcile":
            screenshot(page, "checks.png")
    assert all(listed == "Succeeded" and "Passed" in detail for listed, detail in shown.values()), (
        f"check status shown (list, latest execution): {shown}"
    )


def test_rejected_partition_shows_its_reason(page, demo: Demo):
    from playwright.sync_api import expect

    rejected = demo.rejected()
    assert len(rejected) == 1, rejected
    ((key, reason),) = rejected.items()
    assert "url" in reason, reason  # the demo's legacy export lacks its `url` column
    open_ui(page, demo, "/assets/catalog_items")
    page.get_by_role("tab", name="Partitions").click()
    partition = partition_key_for(key)
    select_partition(page, partition)
    expect(page.get_by_text("Latest materialization", exact=True)).to_be_visible()
    # What the sensor recorded (`status: rejected` and `rejected_reason`), shown where an
    # operator looks first: the partition's own panel.
    try:
        expect(page.get_by_text("rejected", exact=True).first).to_be_visible()
        expect(page.get_by_text(reason[:40]).first).to_be_visible()
    finally:
        screenshot(page, "rejected_partition.png")


def test_sensor_page_shows_its_ticks(page, demo: Demo):
    from playwright.sync_api import expect

    open_ui(page, demo)
    nav_link(page, "Automation").click()
    page.get_by_role("link", name=re.compile(rf"(^| ){SENSOR}$")).first.click()
    expect(page).to_have_url(re.compile(rf"/sensors/{SENSOR}$"))
    expect(page.get_by_text("Running", exact=True).first).to_be_visible()
    # The tick that found the demo: a run per accepted file, a partition per CSV.
    expect(
        page.get_by_text(f"{len(demo.accepted())} runs requested", exact=True).first
    ).to_be_visible()
    created = page.get_by_text(f"({len(demo.csv_keys)} partitions created)")
    expect(created).to_be_visible()
    created.scroll_into_view_if_needed()
    screenshot(page, "sensor_ticks.png")


def test_backfill_of_two_partitions_launched_by_clicking(page, demo: Demo):
    """Last: its runs re-ingest two files (a no-op on the catalog, new materializations)."""
    from playwright.sync_api import expect

    chosen = [partition_key_for(key) for key in demo.accepted()[:2]]
    open_ui(page, demo, "/assets/catalog_items")
    page.get_by_role("button", name="Materialize…").click()
    # `catalog_items` and `invalid_item_logs` are one multi-asset: the UI says so first.
    dialog = page.get_by_role("dialog")
    confirm = dialog.get_by_role("button", name="Confirm")
    launch = dialog.get_by_role("button", name="Launch backfill")
    expect(confirm.or_(launch)).to_be_visible()
    if confirm.is_visible():
        confirm.click()
    dialog.get_by_text("Select a partition or create one").click()
    for key in chosen:
        pick_partition(page, key)
    page.keyboard.press("Escape")
    expect(dialog.get_by_text(f"{len(chosen)} partitions", exact=True)).to_be_visible()
    launch.click()

    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(toast).to_be_visible()
    backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)
    page.get_by_role("button", name="View").or_(page.get_by_role("link", name="View")).first.click()
    expect(page).to_have_url(re.compile(rf"/runs/b/{backfill_id}"))
    assert sorted(demo.dagster.backfill(backfill_id)["partitionNames"]) == sorted(chosen)

    def completed():
        backfill = demo.dagster.backfill(backfill_id)
        assert backfill["status"] not in ("FAILED", "COMPLETED_FAILED", "CANCELED"), backfill
        assert all(run["status"] != "FAILURE" for run in backfill["runs"]), backfill
        return backfill if backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS") else None

    backfill = demo.dagster.wait_for(completed, f"backfill {backfill_id}", BACKFILL_TIMEOUT)
    assert len(backfill["runs"]) == len(chosen), backfill
    assert all(run["status"] == "SUCCESS" for run in backfill["runs"]), backfill

    page.reload()
    expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible()
    expect(page.get_by_text("100% completed").first).to_be_visible()
    screenshot(page, "backfill.png")
