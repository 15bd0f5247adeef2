"""Object-store access: a local folder as a bucket, or S3/R2. Every read is pinned to an ETag."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from catalog_pipeline.core.errors import ObjectChangedError, PermanentError
from catalog_pipeline.core.naming import hidden_file_reason, is_hidden_key

DEFAULT_BUCKET_URL = "file://./data/bucket"
BLOCK_BYTES = 8 * 1024 * 1024
UPLOAD_PART_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What HEAD (or a listing) says about one object version."""

    key: str
    etag: str
    size: int
    last_modified: datetime


class BucketError(PermanentError):
    """The bucket URL is invalid, or a key escapes the bucket."""


class BucketMissingError(BucketError):
    """The bucket itself does not exist: no such S3 bucket, or no such local folder."""


class ObjectMissingError(BucketError):
    """The object does not exist (deleted, or never written)."""

    def __init__(self, bucket_url: str, key: str) -> None:
        super().__init__(f"{key}: no such object in {bucket_url} (deleted?)")
        self.key = key


class Bucket(Protocol):
    url: str
    # Lanes (key ranges) a sweep lists side by side unless told otherwise: 1 where the
    # listing is the caller's own CPU work (a folder), more where a page is mostly a
    # server's latency.
    list_concurrency: int

    def check(self) -> None:
        """Raise `BucketMissingError` when the bucket does not exist."""
        ...

    def hidden_reason(self, key: str) -> str | None:
        """Why `list_objects` leaves the key out unless asked to include hidden keys; None
        for a key it lists."""
        ...

    def list_objects(
        self, start_after: str | None = None, *, include_hidden: bool = False
    ) -> Iterator[ObjectInfo]: ...

    def head(self, key: str) -> ObjectInfo: ...

    def iter_blocks(self, info: ObjectInfo, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]: ...

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes: ...

    def put(self, key: str, data: bytes) -> ObjectInfo: ...

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Write the local file `path` as object `key` (atomically, in bounded memory)."""
        ...

    def delete(self, key: str) -> None:
        """Delete object `key`; nothing happens when there is none."""
        ...


def open_bucket(url: str, endpoint_url: str | None = None, **s3_options) -> Bucket:
    """`file://PATH` (relative paths are from the working directory) or `s3://BUCKET/PREFIX`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBucket(Path((parsed.netloc + parsed.path) or "."))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BucketError(f"bucket URL {url!r} names no bucket")
        return S3Bucket(parsed.netloc, parsed.path.lstrip("/"), endpoint_url, **s3_options)
    raise BucketError(f"bucket URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")


class LocalBucket:
    """A folder as a bucket. Keys are '/'-separated paths below the folder.

    The ETag is size and modification time (like a web server's), so HEAD stays cheap on
    large files; a rewrite changes it. Files whose name starts with '.' are hidden: they
    are editors' and the system's files, `put`'s unfinished writes (`.<name>.tmp`) and
    the staged decompressed copies of compressed objects (`.<name>.<etag>.staged.csv`).
    """

    list_concurrency = 1

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise BucketError(f"key {key!r} escapes the bucket folder {self.root}")
        return path

    def _info(self, key: str, stat: os.stat_result) -> ObjectInfo:
        token = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=8)
        return ObjectInfo(
            key=key,
            etag=token.hexdigest(),
            size=stat.st_size,
            last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
        )

    def check(self) -> None:
        if not self.root.exists():
            raise BucketMissingError(f"bucket folder {self.root} does not exist")
        if not self.root.is_dir():
            raise BucketMissingError(f"bucket folder {self.root} is a file, not a folder")

    def hidden_reason(self, key: str) -> str | None:
        if is_hidden_key(key):
            return hidden_file_reason(key)
        try:
            self._path(key)
        except BucketError as error:  # a symbolic link to a file outside the folder
            return f"outside the bucket: {error}"
        return None

    def list_objects(
        self, start_after: str | None = None, *, include_hidden: bool = False
    ) -> Iterator[ObjectInfo]:
        """Objects in key order. A folder that does not exist lists nothing: the sensor of
        a fresh `dagster dev` watches one that nothing has written yet (`check` is for
        a user who named the folder).

        The folder is walked in key order rather than walked whole and sorted: each
        folder's entries sort as their keys do (a subfolder as `name/`, so `a.csv` <
        `a/…` < `a0.csv`), and a subfolder whose keys all sort before `start_after` is
        never opened, so a sensor page of a million-file folder reads only what it lists.
        Symbolic links to folders are not followed; a link to a file is listed when it
        stays inside the bucket folder."""
        if self.root.is_dir():
            yield from self._walk(str(self.root), "", start_after, include_hidden)

    def _walk(
        self, folder: str, prefix: str, start_after: str | None, include_hidden: bool
    ) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(
                    (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name, entry)
                    for entry in scan
                )
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while listing
        for name, entry in entries:
            key = prefix + name
            if name.endswith("/"):
                if start_after is None or key >= start_after or start_after.startswith(key):
                    yield from self._walk(entry.path, key, start_after, include_hidden)
                continue  # else every key below it sorts before the cursor
            if start_after is not None and key <= start_after:
                continue
            if not include_hidden:
                hidden = self.hidden_reason(key) if entry.is_symlink() else is_hidden_key(key)
                if hidden:
                    continue
            try:
                if not entry.is_file():
                    continue  # a symbolic link to a folder, a socket, a dangling link
                yield self._info(key, entry.stat())
            except FileNotFoundError:
                continue  # deleted while listing

    def head(self, key: str) -> ObjectInfo:
        try:
            return self._info(key, self._path(key).stat())
        except FileNotFoundError:
            raise ObjectMissingError(self.url, key) from None

    def _check(self, info: ObjectInfo, handle) -> None:
        current = self._info(info.key, os.fstat(handle.fileno()))
        if current.etag != info.etag:
            raise ObjectChangedError(info.key, info.etag, f"current ETag {current.etag}")

    def iter_blocks(self, info: ObjectInfo, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
        with self._path(info.key).open("rb") as handle:
            self._check(info, handle)
            while block := handle.read(block_bytes):
                yield block
            self._check(info, handle)

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        with self._path(info.key).open("rb") as handle:
            self._check(info, handle)
            handle.seek(start)
            data = handle.read(end - start)
            self._check(info, handle)
        return data

    def put(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)  # readers never see a half-written object
        return self.head(key)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            shutil.copyfile(path, temporary)
            temporary.replace(target)  # readers never see a half-written object
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return self.head(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Bucket:
    """S3 or Cloudflare R2 (set `endpoint_url`). Reads use `IfMatch` on the planned ETag."""

    list_concurrency = 4

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None, **options
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        # One attempt per call unless told otherwise: core.retry retries, within its budget.
        options.setdefault("config", Config(retries={"total_max_attempts": 1}))
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None, **options)

    def _info(self, key: str, etag: str, size: int, last_modified: datetime) -> ObjectInfo:
        return ObjectInfo(key=key, etag=etag.strip('"'), size=size, last_modified=last_modified)

    def _missing(self, error: Exception) -> BucketMissingError | None:
        """Our error for S3's "no such bucket" answer; None for any other."""
        response = getattr(error, "response", None) or {}
        if response.get("Error", {}).get("Code") != "NoSuchBucket":
            return None
        return BucketMissingError(
            f"bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}"
        )

    def check(self) -> None:
        """One listing call, with the permission the ingest needs anyway."""
        from botocore.exceptions import ClientError

        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ClientError as error:
            if (missing := self._missing(error)) is None:
                raise
            raise missing from None

    def hidden_reason(self, key: str) -> str | None:
        # Writes are atomic: no partial objects to hide. Keys whose file name starts with
        # '.' are hidden as in a local folder (the staged copies of compressed objects).
        return hidden_file_reason(key) if is_hidden_key(key) else None

    def list_objects(
        self, start_after: str | None = None, *, include_hidden: bool = False
    ) -> Iterator[ObjectInfo]:
        from botocore.exceptions import ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        arguments = {"Bucket": self.bucket, "Prefix": self.prefix}
        if start_after:
            arguments["StartAfter"] = start_after
        try:
            for page in paginator.paginate(**arguments):
                for entry in page.get("Contents", []):
                    if not include_hidden and is_hidden_key(entry["Key"]):
                        continue
                    yield self._info(
                        entry["Key"], entry["ETag"], entry["Size"], entry["LastModified"]
                    )
        except ClientError as error:
            if (missing := self._missing(error)) is None:
                raise
            raise missing from None

    def head(self, key: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise ObjectMissingError(self.url, key) from None
            raise
        return self._info(
            key, response["ETag"], response["ContentLength"], response["LastModified"]
        )

    def _get(self, info: ObjectInfo, **arguments):
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(
                Bucket=self.bucket, Key=info.key, IfMatch=f'"{info.etag}"', **arguments
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412") or status == 412:
                raise ObjectChangedError(info.key, info.etag, "the bucket answered 412") from None
            if code in ("NoSuchKey", "404") or status == 404:
                raise ObjectChangedError(info.key, info.etag, "the object was deleted") from None
            raise

    def iter_blocks(self, info: ObjectInfo, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
        body = self._get(info)["Body"]
        try:
            yield from body.iter_chunks(block_bytes)
        finally:
            body.close()

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        response = self._get(info, Range=f"bytes={start}-{end - 1}")
        return response["Body"].read()

    def put(self, key: str, data: bytes) -> ObjectInfo:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.head(key)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """A multipart upload (boto3's transfer manager) of 8 MiB parts, at most four in
        flight: memory stays a few parts whatever the file's size."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=UPLOAD_PART_BYTES,
            multipart_chunksize=UPLOAD_PART_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
        try:
            self.client.upload_file(str(path), self.bucket, key, Config=config)
        except S3UploadFailedError as error:
            # boto3 wraps the S3 answer without chaining it: chain it, so that a 503 or a
            # SlowDown is retried like any other transient S3 error (core.errors).
            if error.__context__ is not None:
                raise error from error.__context__
            raise
        return self.head(key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)  # S3: 204 for no such key
