"""Find CSV record boundaries in raw bytes: Python `csv` quoting, with recovery from
quotes that never close.

A record ends at a line feed that is not inside a quoted field. A quote opens a quoted
field only at the start of a field (after `,`, a line break or the start of the data),
exactly as Python's `csv` module reads it; inside a quoted field a doubled quote is an
escaped quote and any other quote closes the field. Stray quotes in unquoted fields
(`12" vinyl`) are therefore literal and never swallow the following lines.

**Unclosed quotes.** An opening quote a scraper never closed (`SQ-500,"Thing 500,…`)
would, read as `csv` reads it, swallow every line up to the next quote character
anywhere in the file. So a quoted field that runs past a line feed must end like a
field: its closing quote followed by `,`, a line break or the end of the data, within
`QuoteBounds` (by default 1 MiB and 500 line feeds from its opening quote). One that does
not (it never closes, it "closes" on the next row's opening quote, mid-field, or it runs
past a bound) is an unclosed quote: its record ends at the first line feed after the
opening quote, is listed in `RecordScanner.unclosed`, and scanning resumes there, outside
quotes, so the rows after it are read as rows. A quoted field that closes on its own line
keeps `csv`'s reading, whatever follows the quote.

The rule depends on the bytes alone, never on how they are cut into pieces: the planner
(which streams the whole object) and the reader (one chunk, which always ends on a record
end) find the same records. To decide, the scanner holds back the bytes of a multi-line
quoted field that is still open at the end of a piece (at most `max_bytes` of them).

The scan runs numpy over the bytes, a piece of at most 1 MiB at a time. Where the quotes of
a piece simply alternate (each one that opens starts a field or follows a doubled quote,
as in any well-formed CSV), numpy also tells the opening from the closing ones;
otherwise a Python loop walks the quote characters. Multi-byte UTF-8 is safe: no byte of a
multi-byte sequence equals `"`, `,`, CR or LF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UTF8_BOM = b"\xef\xbb\xbf"
QUOTE = 0x22
COMMA = 0x2C
LF = 0x0A
CR = 0x0D
_FIELD_START_AFTER = frozenset((COMMA, LF, CR))

DEFAULT_MAX_QUOTED_BYTES = 1 << 20
DEFAULT_MAX_QUOTED_LINE_FEEDS = 500
_PIECE_BYTES = 1 << 20
_WINDOW_AFTER_CUT = 8 << 10

_OPEN = -1  # a field's close in `_fields` when it is still open at the end of the piece


@dataclass(frozen=True, slots=True)
class QuoteBounds:
    """How far a quoted field may run past a line feed before its opening quote counts
    as unclosed: bytes from the opening quote to the closing one, and line feeds inside."""

    max_bytes: int = DEFAULT_MAX_QUOTED_BYTES
    max_line_feeds: int = DEFAULT_MAX_QUOTED_LINE_FEEDS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_line_feeds < 1:
            raise ValueError(f"quote bounds must be positive, got {self}")


DEFAULT_QUOTE_BOUNDS = QuoteBounds()


@dataclass(frozen=True, slots=True)
class UnclosedQuote:
    """An opening quote that never closed as a field: its record was cut at `cut` (the
    first line feed after it, or the end of the data)."""

    quote: int
    cut: int


@dataclass(slots=True)
class _Piece:
    """Bytes to scan with their line feed and quote positions (relative to `base`)."""

    data: bytes | memoryview
    base: int
    newlines: np.ndarray
    quotes: np.ndarray

    @classmethod
    def of(cls, data: bytes | memoryview, base: int) -> _Piece:
        arr = np.frombuffer(data, dtype=np.uint8)
        return cls(data, base, np.flatnonzero(arr == LF), np.flatnonzero(arr == QUOTE))

    @classmethod
    def concatenated(cls, pieces: list[_Piece]) -> _Piece:
        """Consecutive pieces as one."""
        base = pieces[0].base
        return cls(
            b"".join(piece.data for piece in pieces),
            base,
            np.concatenate([piece.newlines + (piece.base - base) for piece in pieces]),
            np.concatenate([piece.quotes + (piece.base - base) for piece in pieces]),
        )


@dataclass(slots=True)
class RecordScanner:
    """Incremental scanner: feed consecutive pieces of one stream, get record-ending LFs;
    `finish()` at the end of the data gives the last ones.

    The record ends come in order but may lag behind the pieces: the line feeds after an
    opening quote are held back until its field closes or is found unclosed. After each
    call, `cr_before` says which of the ends it returned follow a CR (for a caller that
    tells blank CRLF lines from records without keeping the bytes).
    """

    bounds: QuoteBounds = field(default_factory=QuoteBounds)
    unclosed: list[UnclosedQuote] = field(default_factory=list)
    prev_byte: int = LF  # the byte before the next one to scan
    _held: list[_Piece] = field(default_factory=list)  # from the opening quote of a field
    _held_bytes: int = 0
    _held_scanned: int = 0  # ... still open when that many of its bytes were scanned
    _long_quote: int | None = None  # a one-line field still open, over max_bytes long
    _long_quote_seen: bool = False  # ... whose last byte so far is an undecided quote
    cr_before: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    @property
    def pending(self) -> bool:
        """True while a quoted field is open (its record end not yet known)."""
        return bool(self._held) or self._long_quote is not None

    def feed(
        self, data: bytes | memoryview, base: int = 0, quotes_seen: list | None = None
    ) -> np.ndarray:
        """The absolute offsets of record-ending LFs found so far in `data` (which starts
        at object offset `base`) and in the bytes held back from earlier pieces.

        `quotes_seen`, if given, gets the absolute offsets of the quote characters in
        `data` appended (as arrays), for a caller that needs them too.
        """
        view = memoryview(data)
        ends: list[_Ends] = []
        for at in range(0, len(view), _PIECE_BYTES):
            piece = _Piece.of(view[at : at + _PIECE_BYTES], base + at)
            if quotes_seen is not None:
                quotes_seen.append(piece.quotes + piece.base)
            ends.extend(self._scan(piece, final=False))
        return self._joined(ends)

    def finish(self) -> np.ndarray:
        """The record ends still held back, with the end of the data reached: a quoted
        field still open is unclosed."""
        if self._long_quote is not None:
            quote, self._long_quote = self._long_quote, None
            if not self._long_quote_seen:  # (a quote on the last byte closes the field)
                self.unclosed.append(UnclosedQuote(quote, -1))
            return self._joined([])
        if not self._held:
            return self._joined([])
        return self._joined(self._scan(_Piece.of(b"", self._held[-1].base), final=True))

    def _joined(self, ends: list[_Ends]) -> np.ndarray:
        if not ends:
            self.cr_before = np.empty(0, dtype=bool)
            return np.empty(0, np.int64)
        self.cr_before = np.concatenate([cr for _, cr in ends])
        return np.concatenate([positions for positions, _ in ends]).astype(np.int64)

    def _scan(self, piece: _Piece, final: bool) -> list[_Ends]:
        if self._held:
            # Scanned again from the opening quote once the bytes have doubled since the
            # last scan (or at the end): about twice the bytes in all, however small the
            # pieces.
            self._held.append(piece)
            self._held_bytes += len(piece.data)
            if not final and self._held_bytes < 2 * self._held_scanned:
                return []
            piece, self._held = _Piece.concatenated(self._held), []
        elif self._long_quote is not None:
            start = self._continue_long_field(piece)
            if start is None:
                return []
            ends, piece = start
            return [ends, *self._scan_from_outside(piece, final)]
        return self._scan_from_outside(piece, final)

    def _continue_long_field(self, piece: _Piece) -> tuple[_Ends, _Piece] | None:
        """A one-line quoted field over `max_bytes` is open: it closes before the piece's
        first LF (and scanning goes on after the quote), or that LF makes it unclosed."""
        arr = np.frombuffer(piece.data, dtype=np.uint8)
        size = len(arr)
        if not size:
            return None
        close = None
        index = 0
        quotes = piece.quotes.tolist()
        if self._long_quote_seen:
            if arr[0] == QUOTE:  # the quote ending the previous piece was escaped
                index = 1
            else:
                close = -1
        self._long_quote_seen = False
        while close is None and index < len(quotes):
            position = quotes[index]
            index += 1
            if position + 1 >= size:
                self._long_quote_seen = True
            elif arr[position + 1] == QUOTE:
                index += 1
            else:
                close = position
        first_lf = int(piece.newlines[0]) if len(piece.newlines) else None
        if close is not None and (first_lf is None or close < first_lf):
            self._long_quote = None
            self.prev_byte = QUOTE
            return _ends(np.empty(0, np.int64), arr, piece.base, QUOTE), _tail(piece, close + 1)
        if first_lf is None:
            self.prev_byte = int(arr[-1])
            return None
        self.unclosed.append(UnclosedQuote(self._long_quote, piece.base + first_lf))
        cut = _ends(np.array([first_lf], np.int64), arr, piece.base, self.prev_byte)
        self._long_quote = None
        self._long_quote_seen = False
        self.prev_byte = LF
        return cut, _tail(piece, first_lf + 1)

    def _scan_from_outside(self, piece: _Piece, final: bool) -> list[_Ends]:
        """Record ends in `piece`, which starts outside quotes after `prev_byte`.

        The piece is looked at whole first (the usual data has no unclosed quote). After
        a cut, the scan goes on in a small window that doubles while it finds nothing to
        cut, so that a file with an unclosed quote on every line costs a pass over its
        bytes, not a pass per line."""
        out: list[_Ends] = []
        bounds = self.bounds
        data = np.frombuffer(piece.data, dtype=np.uint8)
        total = len(data)
        position, window = 0, total
        while position < total:
            stop = min(total, position + window)
            last = stop == total
            at_end = final and last
            arr = data[position:stop]
            size = len(arr)
            low, high = np.searchsorted(piece.newlines, (position, stop))
            newlines = piece.newlines[low:high] - position
            low, high = np.searchsorted(piece.quotes, (position, stop))
            prev = self.prev_byte
            opens, closes, quote_seen = _fields(arr, piece.quotes[low:high] - position, prev)
            if quote_seen and at_end:
                closes[-1] = size - 1  # a quote on the last byte of the data closes
                quote_seen = False
            open_at_end = bool(len(closes)) and closes[-1] == _OPEN
            # The earliest the last field can still close: at the end (or on the quote
            # ending the window); the line feeds inside each field so far.
            reach = np.where(closes == _OPEN, size - 1 if quote_seen else size, closes)
            inside = np.searchsorted(newlines, reach) - np.searchsorted(newlines, opens)
            multi_line = inside > 0
            too_long = ((reach - opens) > bounds.max_bytes) | (inside > bounds.max_line_feeds)
            after = arr[np.minimum(closes + 1, size - 1)]
            ends_field = (closes + 1 >= size) | (after == COMMA) | (after == LF) | (after == CR)
            bad = multi_line & (too_long | ~ends_field)
            if open_at_end:
                bad[-1] = at_end or (multi_line[-1] and too_long[-1])
            if not bad.any():
                if open_at_end and not last:
                    window *= 2  # undecided within the window: look further
                    continue
                settled = _outside(newlines, opens, np.where(closes == _OPEN, size, closes))
                out.append(_ends(settled, arr, piece.base + position, prev))
                if open_at_end:
                    quote = position + int(opens[-1])
                    self._hold(piece, quote, bool(multi_line[-1]), quote_seen, data)
                else:
                    self.prev_byte = int(arr[-1])
                position, window = stop, window * 2
                continue
            first_bad = int(np.argmax(bad))
            quote = int(opens[first_bad])
            next_lf = int(np.searchsorted(newlines, quote))
            settled = _outside(newlines[:next_lf], opens[:first_bad], closes[:first_bad])
            out.append(_ends(settled, arr, piece.base + position, prev))
            if next_lf == len(newlines):  # open at the end of the data, on its last line
                self.unclosed.append(UnclosedQuote(piece.base + position + quote, -1))
                return out
            cut = int(newlines[next_lf])
            self.unclosed.append(
                UnclosedQuote(piece.base + position + quote, piece.base + position + cut)
            )
            out.append(_ends(np.array([cut], np.int64), arr, piece.base + position, prev))
            self.prev_byte = LF
            position, window = position + cut + 1, _WINDOW_AFTER_CUT
        return out

    def _hold(
        self, piece: _Piece, quote: int, multi_line: bool, quote_seen: bool, arr: np.ndarray
    ) -> None:
        """Keep the field open at the end of `piece` for the next one: its bytes when it
        has a line feed or is short (it may yet be found unclosed, and the bytes after
        its first line feed scanned again), only its opening quote when it is a long
        single line (any line feed before its close will make it unclosed)."""
        reach = len(arr) - (1 if quote_seen else 0)
        if multi_line or reach - quote <= self.bounds.max_bytes:
            self.prev_byte = int(arr[quote - 1]) if quote else self.prev_byte
            held = _tail(piece, quote)
            self._held = [_Piece(bytes(held.data), held.base, held.newlines, held.quotes)]
            self._held_bytes = self._held_scanned = len(held.data)
        else:
            self._long_quote = piece.base + quote
            self._long_quote_seen = quote_seen
            self.prev_byte = int(arr[-1])


def _tail(piece: _Piece, start: int) -> _Piece:
    """The piece from `start` on."""
    newlines = piece.newlines[np.searchsorted(piece.newlines, start) :] - start
    quotes = piece.quotes[np.searchsorted(piece.quotes, start) :] - start
    return _Piece(memoryview(piece.data)[start:], piece.base + start, newlines, quotes)


_Ends = tuple[np.ndarray, np.ndarray]  # absolute record-ending LFs, and whether a CR precedes


def _ends(positions: np.ndarray, arr: np.ndarray, base: int, prev_byte: int) -> _Ends:
    """`positions` (LFs in `arr`, which follows `prev_byte`) made absolute, with their CR flags."""
    before = arr[np.maximum(positions - 1, 0)] if len(arr) else np.empty(0, np.uint8)
    cr = np.where(positions > 0, before, prev_byte) == CR
    return positions.astype(np.int64) + base, cr


def _outside(newlines: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> np.ndarray:
    """The line feeds not inside any field [opens[i], closes[i])."""
    if not len(opens):
        return newlines
    slot = np.searchsorted(opens, newlines, side="right") - 1
    inside = (slot >= 0) & (newlines < closes[np.maximum(slot, 0)])
    return newlines[~inside]


def _fields(arr: np.ndarray, quotes: np.ndarray, prev_byte: int) -> tuple[np.ndarray, ...]:
    """The quoted fields of a piece that starts outside quotes, as `csv` reads them:
    (opening quotes, closing quotes, quote_seen). A field still open at the end of the
    piece has `_OPEN` as its close; `quote_seen` says the piece's last byte is a quote
    inside it whose meaning (close or escape) the next byte decides."""
    fields = _alternating(arr, quotes, prev_byte)
    if fields is not None:
        return fields
    return _walk(arr, quotes.tolist(), prev_byte)


def _alternating(
    arr: np.ndarray, quotes: np.ndarray, prev_byte: int
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The fields when the quotes simply alternate, found without a loop; None when
    `_walk` must decide.

    Quotes alternate open, close, open, … exactly when every quote taken as an opening
    one starts a field (follows `,`, a line break or the start) or directly follows
    the closing one before it: that pair is a doubled quote, which `_walk` skips inside
    a field and which is merged away here. A quote on the piece's last byte is left to
    `_walk` (the next byte decides it).
    """
    size = len(arr)
    if len(quotes) and quotes[-1] == size - 1:
        return None
    opens, closes = quotes[0::2], quotes[1::2]
    before = arr[np.maximum(opens - 1, 0)]
    if len(opens) and opens[0] == 0:
        before = before.copy()
        before[0] = prev_byte
    doubled = np.zeros(len(opens), dtype=bool)
    doubled[1:] = closes[: len(opens) - 1] == opens[1:] - 1
    starts_field = (before == COMMA) | (before == LF) | (before == CR)
    if not bool(np.all(starts_field | doubled)):
        return None
    # A doubled quote is a close and the open right after it: drop both.
    field_opens = opens[~doubled]
    keep_close = np.ones(len(closes), dtype=bool)
    keep_close[: len(opens) - 1] = ~doubled[1 : len(closes) + 1]
    field_closes = closes[keep_close].astype(np.int64)
    if len(field_opens) > len(field_closes):
        field_closes = np.append(field_closes, _OPEN)
    return field_opens.astype(np.int64), field_closes, False


def _walk(
    arr: np.ndarray, quotes: list[int], prev_byte: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Quote by quote, as `csv` reads them."""
    size = len(arr)
    opens: list[int] = []
    closes: list[int] = []
    inside = quote_seen = False
    index = 0
    count = len(quotes)
    while index < count:
        position = quotes[index]
        index += 1
        if not inside:
            before = arr[position - 1] if position else prev_byte
            if before in _FIELD_START_AFTER:
                inside = True
                opens.append(position)
        elif position + 1 < size:
            if arr[position + 1] == QUOTE:
                index += 1  # escaped quote: skip its partner
            else:
                inside = False
                closes.append(position)
        else:
            quote_seen = True  # decided by the next piece's first byte
    if inside:
        closes.append(_OPEN)
    return np.array(opens, np.int64), np.array(closes, np.int64), quote_seen
