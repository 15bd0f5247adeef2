"""IDN homograph rules for punycode (``xn--``) host labels, in the spirit of Unicode TR39.

A raw non-ASCII host is already rejected (``url_non_ascii_host``); this module judges the
ASCII spelling of an IDN, ``xn--pple-43d.com`` for ``аpple.com``, the way browsers decide
whether to display an IDN label in Unicode or keep it as punycode. A host is suspicious
(``url_confusable_host``) when one of its ``xn--`` labels:

1. is not valid IDNA: longer than 63 characters, not decodable punycode, decodes to an
   empty or all-ASCII label or one that does not encode back to the same text, or is not
   in the normalized lowercase form IDNA's mapping gives (NFKC, lowercase: no fullwidth
   forms, ligatures or capitals). Browsers refuse such a host outright; it gets this
   reason, not ``url_no_host``, because a host is there and only its IDN form is broken;
2. has a character outside the identifier-safe set: only letters (``Ll Lo Lm``), marks
   (``Mn Mc``, never first), digits (``Nd Nl``) and ``-`` are allowed; invisible
   (default-ignorable: joiners, variation selectors, Hangul fillers) and unnamed
   characters are not, nor the Latin letters TR39 restricts because they imitate ASCII
   ones (``ɑ ɡ ɩ ȷ`` and small capitals);
3. mixes scripts beyond TR39's "highly restrictive" profile: one script, or Latin with
   Han + Hiragana + Katakana (Japanese), Han + Hangul (Korean) or Han + Bopomofo
   (Chinese). Latin + Cyrillic, Latin + Greek, Cyrillic + Greek, Latin + Arabic, … are
   rejected. Digits from two number systems in one label are rejected too;
4. is a whole-script confusable: written in Cyrillic or Greek using only letters that
   look like Latin ones (``аррӏе`` reads ``apple``, ``ορτ`` reads ``opt``), unless the
   top-level domain is written in that same script (``рус.рф`` is a Russian word under a
   Cyrillic TLD, where no Latin label can exist to be imitated; ICANN vets script TLDs
   themselves for confusability; a TLD that itself only looks Latin, ``.сом``, exempts
   nothing). Chrome also exempts ASCII ccTLDs such as ``.ru``; we do not, since
   ``аррӏе.ru`` really does collide with ``apple.ru``.

Ordinary IDNs pass: ``münchen.de``, ``bücher.example``, ``例え.jp``, ``пример.рф``
(``и`` and ``м`` look like no Latin letter), ``ελληνικά.gr`` (``ε λ η ά`` neither).

Approximations, all on the conservative side. Python's ``unicodedata`` has no Script
property, so a character's script is the first word of its name (``CYRILLIC SMALL LETTER
A`` -> ``CYRILLIC``), with ``CJK``/``IDEOGRAPHIC`` read as Han, ASCII digits and ``-`` as
common to every script and ``COMBINING …`` marks as inheriting their base's script. Scripts
with two-word names share their first word (``OLD ITALIC``/``OLD PERSIAN``), and
script-neutral letters with other names (``MODIFIER LETTER …``, such as the Hawaiian
ʻokina) count as a script of their own, so they only pass on their own. The confusable
tables are the Cyrillic letters Chrome's IDN spoof checker treats as Latin look-alikes
plus ``ү``, and a hand-picked list of Greek letters that look Latin in lowercase; other
scripts' whole-script confusables (Armenian ``օ``, …) are not listed. The Unicode tables are
those of the running Python (3.11: Unicode 14); later characters count as unassigned.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["ALLOWED_SCRIPT_MIXES", "LATIN_LOOKALIKES", "idn_host_problem", "idn_label_problem"]

MAX_LABEL_LENGTH = 63  # DNS, so the decoder only ever sees short input

# Script sets TR39's "highly restrictive" level allows in one label (besides one script).
ALLOWED_SCRIPT_MIXES: tuple[frozenset[str], ...] = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
)

# Lowercase letters that look like Latin ones, per script (whole-script confusables).
LATIN_LOOKALIKES: dict[str, frozenset[str]] = {
    # Chrome's cyrillic_letters_latin_alike_ (idn_spoof_checker.cc), lowercase, and ү.
    "CYRILLIC": frozenset("аԁеҽһіјӏорԗԛѕԝхуүъьпгѵѡс"),
    # α a, γ y, ι i, κ k, ν v, ο o, ρ p, τ t, υ u, χ x, ϲ c, ϳ j
    "GREEK": frozenset("αγικνορτυχϲϳ"),
}

_LETTER_CATEGORIES = frozenset({"Ll", "Lo", "Lm", "Mn", "Mc", "Nd", "Nl"})
_MARK_CATEGORIES = frozenset({"Mn", "Mc"})
# Name first words that are not the script's name.
_SCRIPT_OF_WORD: dict[str, str] = {
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",  # 々 〇
    "KATAKANA-HIRAGANA": "KATAKANA",  # ー, used in both kana; either is Japanese
    "ARABIC-INDIC": "ARABIC",
    "EXTENDED": "ARABIC",  # EXTENDED ARABIC-INDIC DIGIT …, the only such letters/digits
}
_COMMON_WORDS = frozenset({"DIGIT", "HYPHEN-MINUS"})
_INHERITED_WORDS = frozenset({"COMBINING"})
# Latin letters TR39 restricts (technical/phonetic) that imitate ASCII letters.
_RESTRICTED_LATIN = frozenset("ɑɡɩȷ")
# Default-ignorable characters that are letters or marks (the Cf ones fail the category).
_INVISIBLE = frozenset(
    map(
        chr,
        (
            0x034F,  # COMBINING GRAPHEME JOINER
            0x115F,  # HANGUL CHOSEONG FILLER
            0x1160,  # HANGUL JUNGSEONG FILLER
            0x17B4,
            0x17B5,  # KHMER VOWEL INHERENT AQ/AA
            *range(0x180B, 0x1810),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
            0x3164,  # HANGUL FILLER
            *range(0xFE00, 0xFE10),  # VARIATION SELECTORS
            0xFFA0,  # HALFWIDTH HANGUL FILLER
            *range(0xE0100, 0xE01F0),  # VARIATION SELECTORS SUPPLEMENT
        ),
    )
)


def _script(char: str, name: str) -> str | None:
    """The script of ``char`` as the first word of its name; None for common/inherited."""
    word = name.split(" ", 1)[0]
    if word in _COMMON_WORDS or word in _INHERITED_WORDS:
        return None
    return _SCRIPT_OF_WORD.get(word, word)


def _decode(label: str) -> tuple[str | None, str | None]:
    """``(unicode_label, None)`` for a valid ``xn--`` label, else ``(None, problem)``."""
    if len(label) > MAX_LABEL_LENGTH:
        return None, f"punycode label {label[:20]!r}… is longer than {MAX_LABEL_LENGTH}"
    encoded = label[4:]
    try:
        decoded = encoded.encode("ascii").decode("punycode")
    except UnicodeError:
        return None, f"{label!r} is not valid punycode"
    if not decoded or decoded.isascii() or decoded.encode("punycode").decode() != encoded:
        return None, f"{label!r} is not a valid IDNA label"
    if unicodedata.normalize("NFKC", decoded).lower() != decoded:
        return None, f"{label!r} ({decoded}) is not in IDNA's normalized lowercase form"
    return decoded, None


def _scripts(label: str) -> tuple[set[str], str | None]:
    """The scripts of a decoded label, or a problem with one of its characters."""
    scripts: set[str] = set()
    zeros: set[int] = set()
    for index, char in enumerate(label):
        if char == "-":
            continue
        category = unicodedata.category(char)
        name = unicodedata.name(char, "")
        if (
            category not in _LETTER_CATEGORIES
            or not name
            or char in _INVISIBLE
            or char in _RESTRICTED_LATIN
            or "SMALL CAPITAL" in name
        ):
            shown = name or "unnamed"
            return scripts, f"U+{ord(char):04X} ({shown}) is not an identifier-safe character"
        if index == 0 and category in _MARK_CATEGORIES:
            return scripts, f"starts with the combining mark U+{ord(char):04X} ({name})"
        if category == "Nd":
            zeros.add(ord(char) - unicodedata.digit(char))
        script = _script(char, name)
        if script is not None:
            scripts.add(script)
    if len(zeros) > 1:
        return scripts, "mixes digits from different number systems"
    return scripts, None


def _looks_latin(label: str, script: str) -> bool:
    """True when every ``script`` letter of a one-script label looks like a Latin one."""
    lookalikes = LATIN_LOOKALIKES.get(script)
    if lookalikes is None:
        return False
    return all(c in lookalikes for c in label if _script(c, unicodedata.name(c, "")) == script)


def _tld_scripts(host_labels: list[str]) -> set[str]:
    """The scripts the host's top-level domain is written in, as far as a reader sees:
    ``{"LATIN"}`` for ASCII and for a TLD that itself only looks Latin (``.сом``)."""
    tld = host_labels[-1]
    if not tld.startswith("xn--"):
        return {"LATIN"}
    decoded, _ = _decode(tld)
    if decoded is None:
        return set()
    scripts = _scripts(decoded)[0]
    if len(scripts) == 1 and _looks_latin(decoded, next(iter(scripts))):
        return {"LATIN"}
    return scripts


def idn_label_problem(label: str, tld_scripts: frozenset[str] | set[str]) -> str | None:
    """Why an ``xn--`` label (ASCII lowercase) is not safe to show, or None when it is.

    ``tld_scripts`` are the scripts of the host's top-level domain (whole-script
    confusables are allowed under a TLD in their own script).
    """
    decoded, problem = _decode(label)
    if decoded is None:
        return problem
    scripts, problem = _scripts(decoded)
    if problem is not None:
        return f"{label!r} ({decoded}) {problem}"
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in ALLOWED_SCRIPT_MIXES):
        mix = " + ".join(sorted(s.title() for s in scripts))
        return f"{label!r} ({decoded}) mixes scripts {mix}"
    if len(scripts) == 1 and set(tld_scripts) != scripts:
        (script,) = scripts
        if _looks_latin(decoded, script):
            return (
                f"{label!r} ({decoded}) is {script.title()} made only of letters that "
                "look Latin (a whole-script confusable)"
            )
    return None


@lru_cache(maxsize=4096)
def idn_host_problem(host: str) -> str | None:
    """Why an ASCII lowercase host with ``xn--`` labels is a possible homograph, or None.

    Cached: a file's URLs share a few hosts, so each is judged once.
    """
    labels = [label for label in host.split(".") if label]
    if not labels:
        return None
    tld_scripts: set[str] | None = None
    for label in labels:
        if label.startswith("xn--"):
            if tld_scripts is None:
                tld_scripts = _tld_scripts(labels)
            problem = idn_label_problem(label, tld_scripts)
            if problem is not None:
                return problem
    return None
