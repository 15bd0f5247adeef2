"""Find CSV record boundaries in raw bytes, with Python `csv` quoting semantics.

A record ends at a line feed that is not inside a quoted field. A quote opens a quoted
field only at the start of a field (after `,`, a line break or the start of the data),
exactly as Python's `csv` module reads it; inside a quoted field a doubled quote is an
escaped quote. Stray quotes in unquoted fields (`12" vinyl`) are therefore literal and
never swallow the following lines.

The scan runs numpy over the bytes and a Python loop only over quote characters, so it
costs about one pass over the data. Multi-byte UTF-8 is safe: no byte of a multi-byte
sequence equals `"`, `,`, CR or LF.
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

    def feed(self, data: bytes | memoryview, base: int = 0) -> np.ndarray:
        """Return the absolute offsets (base + index) of the LFs in `data` that end records."""
        size = len(data)
        if size == 0:
            return np.empty(0, dtype=np.int64)
        arr = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(arr == LF)
        quotes = np.flatnonzero(arr == QUOTE).tolist()

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

        self.state = state
        self.prev_byte = int(arr[-1])

        if not opens:
            return newlines.astype(np.int64) + base
        if len(closes) < len(opens):
            closes.append(size)  # still inside quotes at the end of this piece
        starts = np.asarray(opens, dtype=np.int64)
        ends = np.asarray(closes, dtype=np.int64)
        slot = np.searchsorted(starts, newlines, side="right") - 1
        inside = (slot >= 0) & (newlines < ends[np.maximum(slot, 0)])
        return newlines[~inside].astype(np.int64) + base
