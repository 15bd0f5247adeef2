"""Our exception types. Each names what failed and where, so a message stands on its own."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class for errors raised by catalog_pipeline."""


class HeaderError(CatalogError):
    """The object cannot be planned: empty, or its header is unreadable."""


class ObjectChangedError(CatalogError):
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


class ChunkError(CatalogError):
    """A chunk could not be processed; names the file, chunk and byte offset."""

    def __init__(self, object_key: str, chunk_index: int, byte_offset: int, reason: str) -> None:
        super().__init__(f"{object_key}: chunk {chunk_index} at byte {byte_offset}: {reason}")
        self.object_key = object_key
        self.chunk_index = chunk_index
        self.byte_offset = byte_offset
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.object_key, self.chunk_index, self.byte_offset, self.reason)
