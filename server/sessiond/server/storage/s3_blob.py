"""S3BlobStore: the BlobStore protocol over any S3 API (AWS, SeaweedFS, MinIO, ...).

boto3 is synchronous, so every call runs on a bounded thread pool owned by the
store (``max_workers`` threads, as many pooled HTTP connections); at most that
many requests are in flight whatever the number of calling tasks.

Integrity: every upload carries ``ChecksumSHA256`` (per part for multipart
uploads), so the server rejects a payload damaged in transit instead of
storing it; whole-object reads ask for the stored checksum back and botocore
verifies it (a mismatch is ``DataLoss``).

Errors are translated here, once (``raise … from exc``)::

    NoSuchKey / 404                       → NotFound
    412 PreconditionFailed                → AlreadyExists
    416 InvalidRange, short ranged read   → DataLoss
    response checksum mismatch            → DataLoss
    BadDigest / InvalidDigest (upload)    → Unavailable (damaged in transit; retry)
    AccessDenied / InvalidAccessKeyId ... → Unavailable (server misconfiguration)
    NoSuchBucket                          → Unavailable (server misconfiguration)
    connection errors, timeouts, 5xx,
    SlowDown (after botocore's retries)   → Unavailable
    a body cut short or reset mid-read
    (after ``max_attempts`` reads)        → Unavailable

Credentials never appear in messages or logs: messages name the endpoint,
bucket and key, and the S3 error code and message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from sessiond.client.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    SessiondError,
    Unavailable,
)

from .blob import BlobInfo, validate_key, validate_prefix

log = logging.getLogger(__name__)

T = TypeVar("T")
# No S3 client stubs are installed (types-boto3-s3 would provide them).
S3Client = Any

PART_SIZE = 8 << 20
# Failures while reading a response body: botocore's retries end when the
# headers arrive, so a GET whose body breaks off is retried here.
_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError)
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DIGEST = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
_CREDENTIALS = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "403",
    }
)


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def no_expect_continue(request: Any, **_: Any) -> None:
    """Send bodies without ``Expect: 100-continue`` (``Expect`` is not signed).

    botocore adds it to every PUT. SeaweedFS (4.48) mishandles it: after an
    empty-body PUT the kept-alive connection is stuck and the next request
    on it waits out the read timeout, and racing ``If-None-Match`` PUTs
    stall for seconds. What it would save (not sending a body the server
    rejects up front) is rare here: objects are written once, by one writer.
    """
    request.headers.pop("Expect", None)


def _error_code(exc: ClientError) -> tuple[str, str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), str(err.get("Message", "")), int(status or 0)


class S3BlobStore:
    """A BlobStore in ``bucket`` under ``prefix`` (``""`` or ``a/b``).

    Everything is explicit: ``access_key``/``secret_key``/``session_token``
    of ``None`` mean boto3's default credential chain (environment, profile,
    instance role). No I/O happens before :meth:`open`, which creates the
    bucket when ``create_bucket`` is set. ``max_attempts`` counts every try
    of a request (botocore standard retry mode: 5xx, SlowDown, throttling,
    timeouts and connection errors, with backoff); ``connect_timeout`` and
    ``read_timeout`` are per socket operation, in seconds.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        create_bucket: bool = False,
        max_workers: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        part_size: int = PART_SIZE,
        upload_concurrency: int = 2,
        list_page_size: int = 1000,
    ) -> None:
        if prefix.strip("/"):
            validate_key(prefix.strip("/"))
        if part_size < 5 << 20:
            raise InvalidArgument("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint_url or f"https://s3.{region}.amazonaws.com"
        self._endpoint_url = endpoint_url
        self._region = region
        self._credentials = (access_key, secret_key, session_token)
        self._create_bucket = create_bucket
        self._part_size = part_size
        self._upload_concurrency = max(1, upload_concurrency)
        self._page_size = list_page_size
        self._max_attempts = max(1, max_attempts)
        self._config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # total_max_attempts counts the first try; botocore's "max_attempts"
            # would count only the retries.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_workers,
        )
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="s3-blob")
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"S3BlobStore(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"prefix={self.prefix!r})"
        )

    @property
    def events(self) -> Any:
        """botocore's event emitter of the underlying client, for fault
        injection and metrics hooks (``before-send.s3.PutObject`` ...).
        Available after :meth:`open`."""
        if self._client is None:
            raise RuntimeError("S3BlobStore.events is available after open()")
        return self._client.meta.events

    # -- plumbing ---------------------------------------------------------

    def _get_client(self) -> S3Client:
        with self._client_lock:
            if self._client is None:
                access_key, secret_key, token = self._credentials
                session = boto3.session.Session(
                    aws_access_key_id=access_key,
                    aws_secret_access_key=secret_key,
                    aws_session_token=token,
                    region_name=self._region,
                )
                client = session.client("s3", endpoint_url=self._endpoint_url, config=self._config)
                client.meta.events.register("before-send.s3", no_expect_continue)
                self._client = client
            return self._client

    async def _call(
        self, fn: Callable[..., T], *args: Any, key: str | None = None, op: str = "request"
    ) -> T:
        """Run ``fn(client, *args)`` on the pool, translating its errors."""
        if self._closed:
            raise Unavailable("blob store is closed")

        def run() -> T:
            return fn(self._get_client(), *args)

        try:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, run)
        except RuntimeError as exc:  # the pool was shut down under us
            raise Unavailable("blob store is closed") from exc
        try:
            return await fut
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._translate(exc, op, key) from exc

    def _translate(self, exc: Exception, op: str, key: str | None) -> SessiondError:
        what = f"{op} {key!r}" if key is not None else op
        where = f"S3 endpoint {self.endpoint} bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            code, message, status = _error_code(exc)
            if code in _NOT_FOUND and key is not None:
                return NotFound(f"blob {key!r} not found")
            if code == "NoSuchBucket" or (code in _NOT_FOUND and key is None):
                return Unavailable(f"{where} does not exist (server misconfiguration)")
            if code == "PreconditionFailed" or status == 412:
                return AlreadyExists(f"blob {key!r} already exists")
            if code == "InvalidRange" or status == 416:
                return DataLoss(f"{what}: range is past the end of the stored object")
            if code in _DIGEST:
                return Unavailable(
                    f"{what}: {where} rejected the payload's checksum ({code}); "
                    "the bytes were damaged in transit, retry"
                )
            if code in _CREDENTIALS or status == 403:
                return Unavailable(
                    f"{what}: {where} refused the server's credentials ({code}: {message}); "
                    "check the server's S3 configuration"
                )
            return Unavailable(f"{what}: {where} failed: {code or status} {message}".rstrip())
        if isinstance(exc, FlexibleChecksumError):
            return DataLoss(f"{what}: stored object does not match its checksum: {exc}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return Unavailable(f"{what}: no usable S3 credentials ({type(exc).__name__})")
        if isinstance(exc, BotoConnectionError | HTTPClientError | OSError):
            return Unavailable(f"S3 endpoint {self.endpoint} unreachable: {exc} (during {what})")
        return Unavailable(f"{what}: {where} failed: {type(exc).__name__}: {exc}")

    def _key(self, key: str) -> str:
        return self.prefix + key

    # -- writing ----------------------------------------------------------

    def _put_sync(self, client: S3Client, key: str, data: bytes, if_absent: bool) -> None:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ChecksumSHA256": _b64sha256(data),
        }
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        client.put_object(**kwargs)

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        validate_key(key)
        await self._call(self._put_sync, key, bytes(data), if_absent, key=key, op="put")

    def _create_upload(self, client: S3Client, key: str) -> str:
        resp = client.create_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), ChecksumAlgorithm="SHA256"
        )
        return str(resp["UploadId"])

    def _upload_part(
        self, client: S3Client, key: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        checksum = _b64sha256(data)
        resp = client.upload_part(
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

    def _complete(
        self, client: S3Client, key: str, upload_id: str, parts: list[dict[str, Any]]
    ) -> None:
        client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )

    def _abort(self, client: S3Client, key: str, upload_id: str) -> None:
        client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """See :meth:`BlobStore.put_stream`. Parts upload while the next one
        fills, at most ``upload_concurrency`` at a time, so memory stays near
        ``(upload_concurrency + 1) × part_size`` plus one incoming chunk. An
        object of at most one part is a single PUT. On any failure the
        multipart upload is aborted (after its parts in flight land)."""
        validate_key(key)
        size = self._part_size
        buf = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        inflight: deque[asyncio.Task[dict[str, Any]]] = deque()

        async def drain(limit: int) -> None:
            while len(inflight) > limit:
                parts.append(await inflight[0])  # stays queued if it failed
                inflight.popleft()

        def submit(upload: str, data: bytes) -> None:
            number = len(parts) + len(inflight) + 1
            inflight.append(
                asyncio.ensure_future(
                    self._call(self._upload_part, key, upload, number, data, key=key, op="put")
                )
            )

        try:
            async for chunk in chunks:
                buf += chunk
                total += len(chunk)
                # Strictly more than a part: the last part is never empty.
                while len(buf) > size:
                    if upload_id is None:
                        upload_id = await self._call(self._create_upload, key, key=key, op="put")
                    with memoryview(buf) as view:
                        part = bytes(view[:size])
                    del buf[:size]
                    await drain(self._upload_concurrency - 1)
                    submit(upload_id, part)
            if upload_id is None:
                await self._call(self._put_sync, key, bytes(buf), False, key=key, op="put")
                return total
            submit(upload_id, bytes(buf))
            await drain(0)
            await self._call(self._complete, key, upload_id, parts, key=key, op="put")
            return total
        except BaseException:
            if inflight:
                # Let parts in flight land before the abort, so none survives it.
                await asyncio.wait(inflight)
                for task in inflight:
                    if not task.cancelled():
                        task.exception()  # retrieved: the first error is the one raised
            if upload_id is not None:
                try:
                    await self._call(self._abort, key, upload_id, key=key, op="abort upload")
                except Exception as exc:  # abort_stale_uploads() sweeps what is left
                    log.warning("cannot abort multipart upload of blob %r: %s", key, exc)
            raise

    # -- reading ----------------------------------------------------------

    def _read(self, get: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
        """``get()``'s response and its whole body, read through botocore's
        ``StreamingBody`` (``with body`` would hand out the raw urllib3
        stream: no checksum check, no length check, urllib3's own errors).
        A body that breaks off is fetched again, ``max_attempts`` tries in all."""
        for attempt in range(1, self._max_attempts + 1):
            resp = get()
            body = resp["Body"]
            try:
                return resp, bytes(body.read())
            except _BODY_ERRORS as exc:
                if attempt == self._max_attempts:
                    raise
                log.info("S3 response body broke off (%s); reading again", type(exc).__name__)
            finally:
                body.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_sync(self, client: S3Client, key: str) -> bytes:
        _, data = self._read(
            lambda: client.get_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        )
        return data

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return await self._call(self._get_sync, key, key=key, op="get")

    def _range_sync(self, client: S3Client, key: str, offset: int, length: int) -> bytes:
        resp, data = self._read(
            lambda: client.get_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        )
        if "ContentRange" not in resp:  # a server that ignored Range sent it all
            data = data[offset : offset + length]
        return data

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        validate_key(key)
        if offset < 0 or length < 0:
            raise InvalidArgument(f"negative range {offset}+{length}")
        if length == 0:
            # An empty Range is not expressible; still honour NotFound/DataLoss.
            info = await self.stat(key)
            if offset > info.size:
                raise DataLoss(
                    f"blob {key!r} is {info.size} bytes; offset {offset} is past its end"
                )
            return b""
        data = await self._call(self._range_sync, key, offset, length, key=key, op="get_range")
        if len(data) != length:
            raise DataLoss(
                f"blob {key!r}: asked for {length} bytes at {offset}, got {len(data)} "
                "(the stored object is shorter than expected)"
            )
        return data

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        validate_key(key)
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
        return self._iter_chunks(key, chunk_size)

    async def _iter_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        def open_body(client: S3Client) -> Any:
            resp = client.get_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
            return resp["Body"]

        def read(_client: S3Client) -> bytes:
            return bytes(body.read(chunk_size))

        body = await self._call(open_body, key=key, op="get")
        try:
            while piece := await self._call(read, key=key, op="get"):
                yield piece
        finally:
            body.close()  # drops the connection if unread; never blocks

    def _stat_sync(self, client: S3Client, key: str) -> BlobInfo:
        resp = client.head_object(Bucket=self.bucket, Key=self._key(key))
        return BlobInfo(key, int(resp["ContentLength"]))

    async def stat(self, key: str) -> BlobInfo:
        validate_key(key)
        return await self._call(self._stat_sync, key, key=key, op="stat")

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    # -- deleting, listing ------------------------------------------------

    def _delete_sync(self, client: S3Client, key: str) -> None:
        client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._call(self._delete_sync, key, key=key, op="delete")

    def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """See :meth:`BlobStore.list`. Keys are relative to the store's
        prefix; objects whose names are not valid keys are skipped."""
        validate_prefix(prefix)
        return self._list(prefix)

    async def _list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        def pages(client: S3Client) -> Any:
            paginator = client.get_paginator("list_objects_v2")
            return iter(
                paginator.paginate(
                    Bucket=self.bucket,
                    Prefix=self.prefix + prefix,
                    PaginationConfig={"PageSize": self._page_size},
                )
            )

        def next_page(_client: S3Client) -> dict[str, Any] | None:
            return next(it, None)

        it = await self._call(pages, op="list")
        cut = len(self.prefix)
        while (page := await self._call(next_page, op="list")) is not None:
            for obj in page.get("Contents", ()):
                key = str(obj["Key"])[cut:]
                try:
                    validate_key(key)
                except InvalidArgument:
                    continue
                yield BlobInfo(key, int(obj["Size"]))

    async def abort_stale_uploads(
        self, older_than: timedelta, *, now: datetime | None = None
    ) -> int:
        """Abort the multipart uploads under the prefix initiated before
        ``now - older_than`` (``now`` defaults to this host's clock; GC passes
        the database's). Returns how many were aborted. Uploads of a
        ``put_stream`` killed mid-way are otherwise stored (and billed) forever.
        """
        cutoff = (now or datetime.now(UTC)) - older_than

        def sweep(client: S3Client) -> int:
            aborted = 0
            paginator = client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] > cutoff:
                        continue
                    try:
                        client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        if _error_code(exc)[0] != "NoSuchUpload":  # raced with another sweep
                            raise
                        continue
                    aborted += 1
            return aborted

        count = await self._call(sweep, op="abort_stale_uploads")
        if count:
            log.info("aborted %s stale multipart uploads in bucket %s", count, self.bucket)
        return count

    # -- lifecycle --------------------------------------------------------

    def _ensure_bucket(self, client: S3Client) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc)[0] not in ("404", "NoSuchBucket", "NotFound"):
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._region != "us-east-1":  # us-east-1 rejects an explicit constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            client.create_bucket(**kwargs)
            log.info("created bucket %s at %s", self.bucket, self.endpoint)
        except ClientError as exc:
            if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":  # a racing replica
                raise

    async def open(self) -> None:
        """Build the client; create the bucket if asked. Raises ``Unavailable``."""
        if self._create_bucket:
            await self._call(self._ensure_bucket, op="create bucket")
        else:
            await self._call(lambda client: None, op="open")

    async def ping(self) -> None:
        """HeadBucket: cheap, and proves endpoint, credentials and bucket."""
        await self._call(lambda client: client.head_bucket(Bucket=self.bucket), op="ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, True)
        if self._client is not None:
            self._client.close()
