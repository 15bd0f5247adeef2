"""Our exception types, and the one place that decides whether a failure is transient.

Each type names what failed and where, so a message stands on its own. `is_transient`
sorts any exception, ours or a library's, into the two kinds the pipeline treats
differently: transient (the database restarting, the bucket throttling, a dropped
connection: retry with backoff, see `core.retry`) and permanent (bad input, a changed
object, a constraint, a 4xx, a database URL with a wrong password, database, role or
host: fail now, with the reason). `root_cause` gives the
message a user should read: the innermost error, not a framework's wrapper.
"""

from __future__ import annotations

import re

# SQLSTATEs worth retrying: the connection classes (08…), serialization failure and
# deadlock (40001, 40P01), too many connections (53300), the server shutting down or
# starting (57P01-57P03), lock timeout (55P03), and a write reaching a read-only server
# (25006: during a failover, until the connection finds the new primary).
TRANSIENT_SQLSTATES = frozenset(
    {"25006", "40001", "40P01", "53300", "55P03", "57P01", "57P02", "57P03"}
)
# A PostgreSQL connection attempt that fails without a SQLSTATE is retried (refused,
# reset, closed, timed out: the server restarting or the network) unless its message
# says the configuration is wrong: a retry cannot fix a password, a database or role
# that does not exist, an access rule, or a host name that does not resolve. Matched
# case-insensitively; a resolver that is only temporarily failing stays transient.
POSTGRES_CONFIGURATION_MESSAGES = re.compile(
    "|".join(
        (
            r"authentication failed",  # password, ident, peer, …
            r"no password supplied",
            r"no pg_hba\.conf entry",
            r'(database|role|user) "[^"]*" does not exist',
            r"permission denied for database",
            r"could not translate host name",  # libpq
            r"name or service not known",  # glibc's getaddrinfo (EAI_NONAME)
            r"nodename nor servname",  # BSD and macOS getaddrinfo
            r"no address associated with hostname",  # EAI_NODATA
        )
    ),
    re.IGNORECASE,
)
TEMPORARY_RESOLVER_FAILURE = re.compile(r"temporary failure in name resolution", re.IGNORECASE)
# HTTP answers worth retrying: request timeout, too many requests, and server errors.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})
# S3 and R2 error codes that mean "slow down" or "try again", whatever the HTTP status.
TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
        "RequestLimitExceeded",
        "TooManyRequests",
    }
)
# Library exception classes (by name, so core imports none of them) that mean the
# connection failed or dropped: botocore's and urllib3's.
TRANSIENT_CLASS_NAMES = frozenset(
    {
        "HTTPClientError",  # botocore: ConnectionClosedError, ReadTimeoutError, streaming
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ProtocolError",  # urllib3: connection aborted mid-response
        "NewConnectionError",
    }
)


class CatalogError(Exception):
    """Base class for errors raised by catalog_pipeline."""

    transient: bool | None = None  # None: decided by the cause (see `is_transient`)


class TransientError(CatalogError):
    """A failure that may go away by itself: a later attempt may succeed."""

    transient = True


class PermanentError(CatalogError):
    """A failure no retry can fix: the input, the object or the configuration is wrong."""

    transient = False


class ConfigurationError(PermanentError, ValueError):
    """A setting has a value the pipeline cannot work with."""


class HeaderError(PermanentError):
    """The object cannot be planned: empty, or its header is unreadable."""


class DecompressionError(HeaderError):
    """A compressed object (`.csv.gz`, `.csv.zst`) whose stream is corrupt or cut short:
    it cannot be planned, so the file is rejected whole with this reason. Names the object,
    the compression, the compressed byte offset where the stream broke (when known; `near`
    when the decompressor only says which slice of input it was reading) and the cause."""

    def __init__(
        self,
        object_key: str,
        compression: str,
        offset: int | None,
        reason: str,
        exact: bool = True,
    ) -> None:
        where = "" if offset is None else f" {'at' if exact else 'near'} compressed byte {offset:,}"
        super().__init__(f"{object_key}: the {compression} stream is broken{where}: {reason}")
        self.object_key = object_key
        self.compression = compression
        self.offset = offset
        self.reason = reason
        self.exact = exact

    def __reduce__(self):
        return type(self), (self.object_key, self.compression, self.offset, self.reason, self.exact)


class ObjectChangedError(PermanentError):
    """The object was overwritten after it was planned (its ETag no longer matches)."""

    def __init__(self, object_key: str, planned_etag: str, detail: str = "") -> None:
        message = (
            f"{object_key}: the object changed since it was planned (planned ETag {planned_etag})"
            "; the next materialization plans the new version"
        )
        super().__init__(message + (f": {detail}" if detail else ""))
        self.object_key = object_key
        self.planned_etag = planned_etag
        self.detail = detail

    def __reduce__(self):  # crosses process boundaries (chunk workers) intact
        return type(self), (self.object_key, self.planned_etag, self.detail)


class StagedCopyError(PermanentError):
    """The staged decompressed copy of a compressed object, whose byte ranges the chunk
    steps read, is gone or was rewritten since the plan: a new plan stages it anew."""

    def __init__(self, object_key: str, staged_key: str, detail: str) -> None:
        super().__init__(
            f"{object_key}: its staged decompressed copy {staged_key} is gone or changed "
            f"since it was planned ({detail}); materialize the partition again: its plan "
            "step stages a new copy"
        )
        self.object_key = object_key
        self.staged_key = staged_key
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.object_key, self.staged_key, self.detail)


class ChunkError(CatalogError):
    """A chunk could not be processed; names the file, chunk and byte offset.

    Transient or not as its cause is (see `is_transient`)."""

    def __init__(self, object_key: str, chunk_index: int, byte_offset: int, reason: str) -> None:
        super().__init__(f"{object_key}: chunk {chunk_index} at byte {byte_offset}: {reason}")
        self.object_key = object_key
        self.chunk_index = chunk_index
        self.byte_offset = byte_offset
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.object_key, self.chunk_index, self.byte_offset, self.reason)


class IncompleteFileError(PermanentError):
    """Finalize found chunks of the file without a stored result."""

    def __init__(self, object_key: str, chunks: list[int] | tuple[int, ...]) -> None:
        listed = ", ".join(map(str, chunks[:20])) + (" …" if len(chunks) > 20 else "")
        super().__init__(
            f"{object_key}: {len(chunks)} chunk(s) without a stored result ({listed}); "
            "materialize the partition again"
        )
        self.object_key = object_key
        self.chunks = tuple(chunks)

    def __reduce__(self):
        return type(self), (self.object_key, self.chunks)


class RetriesExhaustedError(CatalogError):
    """A transient failure outlasted the retry budget. Permanent for this attempt (the
    step fails instead of retrying again), though a later run may well succeed."""

    transient = False

    def __init__(self, what: str, attempts: int, seconds: float, reason: str) -> None:
        super().__init__(
            f"{what}: {reason} (transient; still failing after {attempts} "
            f"attempt{'s' * (attempts != 1)} over {seconds:.0f} s, the retry budget)"
        )
        self.what = what
        self.attempts = attempts
        self.seconds = seconds
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.what, self.attempts, self.seconds, self.reason)


def causes(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps, outermost first: explicit causes (`raise … from`) and a
    database driver's original error (SQLAlchemy's `.orig`)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        original = getattr(current, "orig", None)
        current = original if isinstance(original, BaseException) else current.__cause__
    return chain


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: decided by the first error in the chain that says."""
    for cause in causes(error):
        verdict = _verdict(cause)
        if verdict is not None:
            return verdict
    return False


def _verdict(error: BaseException) -> bool | None:
    declared = getattr(error, "transient", None)
    if isinstance(error, CatalogError) and declared is not None:
        return declared
    if getattr(error, "connection_invalidated", False):  # SQLAlchemy saw the link drop
        return True
    names = {kind.__name__ for kind in type(error).__mro__}
    module = type(error).__module__
    if module.startswith("psycopg"):
        return _postgres_verdict(error)
    if module == "sqlite3":
        message = str(error).lower()
        return "locked" in message or "busy" in message
    if "ClientError" in names and hasattr(error, "response"):
        return _s3_verdict(error.response)  # botocore's answer from the server
    if "HTTPError" in names and isinstance(getattr(error, "code", None), int):
        return _http_verdict(error.code)  # urllib's HTTPError: an answer with a status
    if names & TRANSIENT_CLASS_NAMES:
        return True
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if "URLError" in names and isinstance(getattr(error, "reason", None), OSError):
        return True  # urllib could not connect
    if "SQLAlchemyError" in names or "BotoCoreError" in names:
        return None  # a wrapper: its cause decides
    return None


def _postgres_verdict(error: BaseException) -> bool:
    state = getattr(error, "sqlstate", None)
    if state is None:
        # No SQLSTATE: the driver's own connection errors (refused, reset, closed by the
        # server, timed out: `ConnectionTimeout` is one) are OperationalErrors, and
        # transient unless they say the configuration is wrong; anything else is a bug
        # of ours, not the server.
        names = {kind.__name__ for kind in type(error).__mro__}
        if not names & {"OperationalError", "InterfaceError"}:
            return False
        return not _postgres_configuration_problem(error)
    return state.startswith("08") or state in TRANSIENT_SQLSTATES


def is_configuration_error(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) is a database connection refused for its
    configuration: credentials, a database or role that does not exist, an access rule,
    a host name that does not resolve. Permanent: the database URL needs fixing."""
    return any(
        type(cause).__module__.startswith("psycopg") and _postgres_configuration_problem(cause)
        for cause in causes(error)
    )


def _postgres_configuration_problem(error: BaseException) -> bool:
    state = getattr(error, "sqlstate", None)
    if state is not None:  # invalid authorization (28…), unknown database (3D000)
        return state.startswith("28") or state == "3D000"
    message = str(error)
    if TEMPORARY_RESOLVER_FAILURE.search(message):
        return False
    return POSTGRES_CONFIGURATION_MESSAGES.search(message) is not None


def _s3_verdict(response: dict) -> bool:
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in TRANSIENT_S3_CODES:
        return True
    return isinstance(status, int) and _http_verdict(status)


def _http_verdict(status: int) -> bool:
    return status in TRANSIENT_HTTP_STATUSES or status >= 500


def root_cause(error: BaseException) -> str:
    """The message a user should read, never a framework's wrapper: our own error's (they
    name the file, chunk and byte offset and carry their cause's reason), else the
    innermost error's first line, named by its type."""
    chain = causes(error)
    for cause in chain:
        if isinstance(cause, CatalogError):
            return _first_line(cause)
    innermost = chain[-1]
    return f"{type(innermost).__name__}: {_first_line(innermost)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
