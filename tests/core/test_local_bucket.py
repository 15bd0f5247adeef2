"""`LocalBucket.list_objects` walks the folder in key order instead of walking it whole and
sorting: the same objects in the same order as sorting every key, from any cursor."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog_pipeline.core.bucket import LocalBucket

# Names whose characters sort around '/' (0x2f): '.' and '-' below it, digits and letters
# above, so folder-versus-file order is exercised (`a.csv` < `a/x` < `a0`).
NAME = st.text(alphabet="a0.-_", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
KEY = st.lists(NAME, min_size=1, max_size=3).map("/".join)


def expected_keys(root: Path, start_after: str | None, include_hidden: bool) -> list[str]:
    """The listing's contract, computed the slow way: every file's key, sorted."""
    bucket = LocalBucket(root)
    keys = sorted(
        path.relative_to(bucket.root).as_posix()
        for path in bucket.root.rglob("*")
        if path.is_file()
    )
    return [
        key
        for key in keys
        if (start_after is None or key > start_after)
        and (include_hidden or bucket.hidden_reason(key) is None)
    ]


def write(root: Path, keys: list[str]) -> list[str]:
    """Write what can be written (a key may need a folder where a file already is)."""
    written = []
    for key in keys:
        path = root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                continue
            path.write_bytes(key.encode())
        except (FileExistsError, NotADirectoryError):
            continue
        written.append(key)
    return written


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(KEY, min_size=0, max_size=25),
    cursor=st.one_of(st.none(), KEY, st.sampled_from(["", "a", "a/", "a.", "a0", "z"])),
    include_hidden=st.booleans(),
)
def test_listing_equals_every_key_sorted_from_any_cursor(
    tmp_path_factory, keys: list[str], cursor: str | None, include_hidden: bool
):
    root = tmp_path_factory.mktemp("bucket")
    write(root, keys)
    listed = [
        info.key for info in LocalBucket(root).list_objects(cursor, include_hidden=include_hidden)
    ]
    assert listed == expected_keys(root, cursor, include_hidden)


def test_a_cursor_skips_folders_without_opening_them(tmp_path: Path, monkeypatch):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.csv").write_text("x")
    opened: list[str] = []
    scandir = os.scandir

    def recording_scandir(path):
        opened.append(Path(path).name)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    listed = [info.key for info in LocalBucket(tmp_path).list_objects("b/x.csv")]
    assert listed == ["c/x.csv"]
    assert opened == [tmp_path.name, "b", "c"]  # `a` sorts wholly before the cursor


def test_links_to_folders_are_not_followed_and_links_outside_are_hidden(tmp_path: Path):
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "f.csv").write_text("f")
    (outside / "secret.csv").write_text("s")
    root = tmp_path / "bucket"
    root.mkdir()
    (root / "a.csv").write_text("a")
    (root / "inside.csv").symlink_to(root / "a.csv")
    (root / "folder_link").symlink_to(outside / "d")
    (root / "escape.csv").symlink_to(outside / "secret.csv")
    (root / "dangling.csv").symlink_to(tmp_path / "nothing.csv")

    bucket = LocalBucket(root)
    assert [info.key for info in bucket.list_objects()] == ["a.csv", "inside.csv"]
    assert [info.key for info in bucket.list_objects(include_hidden=True)] == [
        "a.csv",
        "escape.csv",
        "inside.csv",
    ]
    assert expected_keys(root, None, False) == ["a.csv", "inside.csv"]
