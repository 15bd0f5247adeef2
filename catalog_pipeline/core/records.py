"""Find CSV record boundaries in raw bytes, with Python `csv` quoting semantics.

A record ends at a line feed that is not inside a quoted field. A quote opens a quoted
field only at the start of a field (after `,`, a line break or the start of the data),
exactly as Python's `csv` module reads it; inside a quoted field a doubled quote is an
escaped quote. Stray quotes in unquoted fields (`12" vinyl`) are therefore literal and
never swallow the following lines.

The scan runs numpy over the bytes. Where the quotes of a piece simply alternate (each
one that opens starts a field or follows a doubled quote, as in any well-formed CSV),
numpy also tells the opening from the closing ones; otherwise a Python loop walks the
quote characters. Either way it costs about one pass over the data. Multi-byte UTF-8 is
safe: no byte of a multi-byte sequence equals `"`, `,`, CR or LF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UTF8_BOM = b"\xef\xbb\xbf"
QUOTE = 0x22
COMMA = 0x2C
LF = 0x0A
CR = 0x0D
_FIELD_START_AFTER = frozenset((COMMA, LF, CR))

_OUTSIDE, _INSIDE, _QUOTE_SEEN = 0, 1, 2


@dataclass(slots=True)
class RecordScanner:
    """Incremental scanner: feed consecutive pieces of one stream, get record-ending LFs.

    `state` and `prev_byte` carry the quoting context from one piece to the next, so a
    quoted field may span any number of pieces.
    """

    state: int = _OUTSIDE
    prev_byte: int = LF

    @property
    def inside_quotes(self) -> bool:
        """True when the data fed so far ends inside a quoted field."""
        return self.state == _INSIDE

    def feed(
        self, data: bytes | memoryview, base: int = 0, quotes_seen: list | None = None
    ) -> np.ndarray:
        """Return the absolute offsets (base + index) of the LFs in `data` that end records.

        `quotes_seen`, if given, gets the absolute offsets of the piece's quote characters
        appended (as one array), for a caller that needs them too.
        """
        size = len(data)
        if size == 0:
            return np.empty(0, dtype=np.int64)
        arr = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(arr == LF)
        quotes = np.flatnonzero(arr == QUOTE)
        if quotes_seen is not None:
            quotes_seen.append(quotes + base)

        spans = None if self.state == _QUOTE_SEEN else self._alternating(arr, quotes)
        if spans is None:
            opens, closes, state = self._walk(arr, quotes.tolist())
        else:
            opens, closes = spans
            state = _INSIDE if len(opens) > len(closes) else _OUTSIDE
        self.state = state
        self.prev_byte = int(arr[-1])

        if not len(opens):
            return newlines.astype(np.int64) + base
        starts = np.asarray(opens, dtype=np.int64)
        ends = np.asarray(closes, dtype=np.int64)
        if len(ends) < len(starts):
            ends = np.append(ends, size)  # still inside quotes at the end of this piece
        slot = np.searchsorted(starts, newlines, side="right") - 1
        inside = (slot >= 0) & (newlines < ends[np.maximum(slot, 0)])
        return newlines[~inside].astype(np.int64) + base

    def _alternating(self, arr: np.ndarray, quotes: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The opening and closing quotes when they simply alternate, found without a loop;
        None when `_walk` must decide.

        Quotes alternate open, close, open, … exactly when every quote taken as an opening
        one starts a field (follows `,`, a line break or the start) or directly follows
        the closing one before it: that pair is a doubled quote, which `_walk` skips inside
        a field and which leaves the same bytes inside. A quote on the piece's last byte is
        left to `_walk` (the next piece's first byte decides it).
        """
        size = len(arr)
        if len(quotes) and quotes[-1] == size - 1:
            return None
        inside = self.state == _INSIDE
        opens, closes = (quotes[1::2], quotes[0::2]) if inside else (quotes[0::2], quotes[1::2])
        # The quote before each opening one: the closing one of the same index when the
        # piece starts inside quotes, the one before otherwise (none for the first).
        before_quote = closes[: len(opens)] if inside else np.append(-2, closes)[: len(opens)]
        before = arr[np.maximum(opens - 1, 0)]
        if len(opens) and opens[0] == 0:
            before = before.copy()
            before[0] = self.prev_byte
        starts_field = (before == COMMA) | (before == LF) | (before == CR)
        if not bool(np.all(starts_field | (before_quote == opens - 1))):
            return None
        return (np.append(-1, opens) if inside else opens), closes

    def _walk(self, arr: np.ndarray, quotes: list[int]) -> tuple[list[int], list[int], int]:
        """Quote by quote, as `csv` reads them: (opening quotes, closing quotes, state)."""
        size = len(arr)
        opens: list[int] = []
        closes: list[int] = []
        state = self.state
        index = 0
        if state == _QUOTE_SEEN:
            if arr[0] == QUOTE:  # the quote that ended the previous piece was escaped
                state = _INSIDE
                index = 1
            else:
                state = _OUTSIDE
        if state == _INSIDE:
            opens.append(-1)

        count = len(quotes)
        while index < count:
            position = quotes[index]
            index += 1
            if state == _OUTSIDE:
                before = arr[position - 1] if position else self.prev_byte
                if before in _FIELD_START_AFTER:
                    state = _INSIDE
                    opens.append(position)
            elif position + 1 < size:
                if arr[position + 1] == QUOTE:
                    index += 1  # escaped quote: skip its partner
                else:
                    state = _OUTSIDE
                    closes.append(position)
            else:
                state = _QUOTE_SEEN  # decided by the next piece's first byte
        return opens, closes, state
