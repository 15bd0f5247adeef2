"""The README stays an entrance and the docs stay whole: size, quick start, links, CLI page.

Fast and without services: reads files and builds the CLI parser, nothing else.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_BYTES = 10_000
QUICK_START = (
    "pip install -e '.[dev]' && catalog-pipeline demo",
    "python -m pytest",
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
# A repository path to a page named in prose or code, e.g. `docs/operations.md`.
_BARE_DOC = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", REPO / "scripts" / "cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_comments(text: str) -> str:
    return _COMMENT.sub("", text)


def _prose(text: str) -> str:
    """The text outside code fences and HTML comments (where markdown links render)."""
    return _FENCE.sub("", _without_comments(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(
        char for char in text if char in " -_" or unicodedata.category(char)[0] in ("L", "N", "M")
    )
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = base = _slug(heading)
        n = 0
        while slug in anchors:
            n += 1
            slug = f"{base}-{n}"
        anchors.add(slug)
    return anchors


def _links(page: Path) -> list[tuple[str, Path, str | None]]:
    """(as written, the file it points at, the anchor) for every relative link on `page`."""
    text = page.read_text(encoding="utf-8")
    found = []
    prose = _prose(text)
    for target in _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, …
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        found.append((target, resolved, anchor or None))
    for mention in _BARE_DOC.findall(_without_comments(text)):
        found.append((mention, REPO / mention, None))
    return found


def test_readme_is_an_entrance_not_a_manual():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move the detail to docs/"
    )


def test_readme_keeps_the_quick_start_commands_verbatim():
    lines = [line.strip() for line in README.read_text(encoding="utf-8").splitlines()]
    for command in QUICK_START:
        assert command in lines, f"README.md lost the quick-start command line {command!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    dead = []
    for written, target, anchor in _links(page):
        if not target.exists():
            dead.append(f"{written} (no file {target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            dead.append(f"{written} (no heading #{anchor} in {target.name})")
    assert not dead, f"{page.relative_to(REPO)}: dead links: {list(dict.fromkeys(dead))}"


def test_readme_links_every_page_in_docs():
    linked = {target for _, target, _ in _links(README)}
    missing = [str(doc.relative_to(REPO)) for doc in DOCS if doc.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_cli_page_is_what_the_generator_writes():
    cli_docs = _load_cli_docs()
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == cli_docs.generate(), (
        "docs/cli.md is out of date: run `python scripts/cli_docs.py`"
    )


def test_cli_page_covers_every_command_including_nested_ones():
    from catalog_pipeline.cli import _parser

    generated = _load_cli_docs().generate()
    commands = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    commands.add(subparser.prog)
                    assert name in subparser.prog
                    walk(subparser)

    walk(_parser())
    assert "catalog-pipeline db upgrade" in commands
    for prog in commands:
        assert f"### `{prog}`" in generated, f"docs/cli.md has no --help of {prog}"


def test_cli_generator_picks_up_new_subcommands():
    cli_docs = _load_cli_docs()
    parser = argparse.ArgumentParser(prog="tool")
    level1 = parser.add_subparsers(dest="a")
    level1.add_parser("one")
    group = level1.add_parser("group")
    group.add_subparsers(dest="b").add_parser("deep", aliases=["d"])
    progs = [each.prog for each in cli_docs.iter_parsers(parser)]
    assert progs == ["tool", "tool one", "tool group", "tool group deep"]


def test_cli_help_does_not_depend_on_the_terminal(monkeypatch):
    cli_docs = _load_cli_docs()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_docs.generate()
    monkeypatch.setenv("COLUMNS", "300")
    assert cli_docs.generate() == narrow


def test_the_alias_table_of_input_md_is_the_code_s():
    """docs/input.md's "Column names and aliases" lists exactly the names the header
    mapping accepts for each column."""
    from catalog_pipeline.core.validation import COLUMN_ALIASES

    section = (REPO / "docs" / "input.md").read_text().split("## Column names and aliases")[1]
    documented: dict[str, set[str]] = {}
    for columns, names in re.findall(r"^\| (`[a-z_`, ]+`) \| ([a-z_, ]+) \|$", section, re.M):
        for column in re.findall(r"`([a-z_]+)`", columns):
            documented.setdefault(column, set()).update(n.strip() for n in names.split(","))
    expected = {column: set(aliases) for column, aliases in COLUMN_ALIASES.items()}
    expected["weight"] |= expected["weight_unit"]  # one row for the pair
    expected["weight_unit"] = expected["weight"]
    assert documented == expected
