"""open_blob_store / parse_*_url / redact_url: choosing and configuring a
backend from a URL, rejecting malformed ones, and never leaking a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument, Unavailable
from sessiond.server.storage.blob_url import (
    S3Location,
    open_blob_store,
    parse_s3_url,
    redact_url,
)
from sessiond.server.storage.local_blob import LocalBlobStore
from sessiond.server.storage.s3_blob import S3BlobStore
from tests.fixtures.seaweedfs import S3Server

SECRET = "S3cr3t+/Value=xyz"
TOKEN = "T0ken-very-private"
GOOD = (
    "s3://bkt/a/b?endpoint=http://127.0.0.1:8333&access_key=AK&secret_key=S3cr3t%2B%2FValue%3Dxyz"
)


def chain(exc: BaseException | None) -> str:
    """The messages of an exception and everything it was raised from."""
    text = []
    while exc is not None:
        text.append(f"{exc!s} {exc!r}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


# -- parsing ----------------------------------------------------------------------


def test_parse_full_s3_url() -> None:
    loc = parse_s3_url(
        "s3://my-bucket.v2/tenants/acme/?endpoint=http://127.0.0.1:8333/&region=eu-west-3"
        f"&create_bucket=true&access_key=AK&secret_key=S3cr3t%2B%2FValue%3Dxyz&session_token={TOKEN}"
        "&connect_timeout=0.5&read_timeout=7&max_attempts=2"
    )
    assert loc == S3Location(
        bucket="my-bucket.v2",
        prefix="tenants/acme",
        endpoint_url="http://127.0.0.1:8333",
        region="eu-west-3",
        create_bucket=True,
        connect_timeout=0.5,
        read_timeout=7.0,
        max_attempts=2,
        access_key="AK",
        secret_key=SECRET,
        session_token=TOKEN,
    )
    assert SECRET not in repr(loc) and TOKEN not in repr(loc)


def test_parse_minimal_s3_url() -> None:
    loc = parse_s3_url("s3://bkt")
    assert (loc.bucket, loc.prefix, loc.endpoint_url, loc.region) == ("bkt", "", None, "us-east-1")
    assert not loc.create_bucket and loc.access_key is None and loc.secret_key is None


def test_plus_is_literal_in_secrets() -> None:
    assert parse_s3_url("s3://bkt?access_key=a&secret_key=x+y/z").secret_key == "x+y/z"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("gs://bucket/x", "unknown blob store URL scheme 'gs'"),
        ("s3:bucket", "no bucket"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Bad_Bucket", "bad S3 bucket name 'Bad_Bucket'"),
        ("s3://ab", "bad S3 bucket name"),
        ("s3://" + "b" * 64, "bad S3 bucket name"),
        ("s3://-bucket", "bad S3 bucket name"),
        ("s3://bu..cket", "bad S3 bucket name"),
        ("s3://192.168.1.1", "bad S3 bucket name"),
        ("s3://bucket:9000/x", "just the bucket"),
        ("s3://bkt/a/../b", "bad S3 prefix component '..'"),
        ("s3://bkt/a//b", "bad S3 prefix component ''"),
        ("s3://bkt/with space", "bad S3 prefix component"),
        ("s3://bkt/ü", "bad S3 prefix component"),
        ("s3://bkt?bogus=1", "unknown S3 URL parameter 'bogus'"),
        ("s3://bkt?endpoint", "'endpoint' has no value"),
        ("s3://bkt?region=", "'region' is empty"),
        ("s3://bkt?region=a&region=b", "'region' given twice"),
        ("s3://bkt?region=US_EAST", "bad S3 region"),
        ("s3://bkt?endpoint=ftp://host", "http:// or https://"),
        ("s3://bkt?endpoint=127.0.0.1:8333", "http:// or https://"),
        ("s3://bkt?endpoint=http://", "no host"),
        ("s3://bkt?endpoint=http://h:99999", "not a valid URL"),
        ("s3://bkt?endpoint=http://h/path", "no path or query"),
        ("s3://bkt?create_bucket=maybe", "create_bucket"),
        ("s3://bkt?connect_timeout=0", "connect_timeout"),
        ("s3://bkt?read_timeout=nan", "read_timeout"),
        ("s3://bkt?max_attempts=1.5", "max_attempts"),
        ("s3://bkt?access_key=AK", "go together"),
        (f"s3://bkt?secret_key={SECRET}", "go together"),
        (f"s3://bkt?session_token={TOKEN}", "needs access_key"),
        ("file://otherhost/dir", "local directory"),
        ("file:relative/dir", "absolute path"),
        ("file:///dir?x=1", "no query"),
        ("file://[::1/dir", "malformed"),
        ("s3://[bkt/p", "malformed S3 URL"),
        ("", "empty"),
    ],
)
async def test_malformed_urls(url: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await open_blob_store(url)
    assert complaint in str(info.value)


# Secrets in every position a careless parser might echo them from.
LEAKY = [
    f"s3://AK:{SECRET}@bucket/p",
    f"s3://bkt?access_key=AK&secret_key={SECRET}&bogus=1",
    f"s3://bkt?access_key=AK&secret_key={SECRET}&secret_key={SECRET}",
    f"s3://bkt?secret_key={SECRET}",
    f"s3://bkt?access_key=AK&secret_key={SECRET}&endpoint=http://u:{SECRET}@host",
    f"s3://bkt?access_key=AK&secret_key={SECRET}&endpoint=gopher://x",
    f"s3://bkt?access_key=AK&secret_key={SECRET}&region=bad_region!",
    f"s3://Bad_Bucket?access_key=AK&secret_key={SECRET}",
    f"s3://bkt/../x?access_key=AK&secret_key={SECRET}",
    f"s3://bkt?access_key=AK&secret_key={SECRET}#frag",
    f"s3://bkt?access_key=AK&{SECRET}",
    f"s3://bkt?access_key=AK&secret_key=x&{SECRET}=1",
    f"s3://bkt?access_key=AK&secret_key=x&session_token={SECRET}&max_attempts=x",
]


@pytest.mark.parametrize("url", LEAKY)
async def test_errors_never_echo_secrets(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await open_blob_store(url)
    assert "S3cr3t" not in chain(info.value)


@pytest.mark.parametrize("url", [*LEAKY, GOOD.replace("S3cr3t%2B%2FValue%3Dxyz", SECRET)])
def test_redact_url_hides_secrets(url: str) -> None:
    redacted = redact_url(url)
    assert SECRET not in redacted
    assert "S3cr3t" not in redacted


def test_redact_url_keeps_what_helps() -> None:
    url = (
        "s3://bkt/p?endpoint=http://127.0.0.1:8333&region=us-east-1&create_bucket=1"
        f"&access_key=AK&secret_key={SECRET}&session_token={TOKEN}"
    )
    assert redact_url(url) == (
        "s3://bkt/p?endpoint=http://127.0.0.1:8333&region=us-east-1&create_bucket=1"
        "&access_key=***&secret_key=***&session_token=***"
    )
    assert redact_url("/var/lib/sessiond/blobs") == "/var/lib/sessiond/blobs"
    assert redact_url("file:///data") == "file:///data"
    assert redact_url("http://[broken") == "http://[broken"
    assert redact_url(f"s3://AK:{SECRET}@bkt/p?region=x") == "s3://***@bkt/p?region=x"


# -- local ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["file", "file-localhost", "plain"])
async def test_local_urls_create_the_directory(tmp_path: Path, form: str) -> None:
    root = tmp_path / "deep" / "blobs"
    url = {
        "file": f"file://{root}",
        "file-localhost": f"file://localhost{root}",
        "plain": str(root),
    }[form]
    store = await open_blob_store(url)
    try:
        assert isinstance(store, LocalBlobStore)
        assert store.root == root and root.is_dir()
        await store.ping()
        await store.put("k", b"v")
        assert (root / "k").read_bytes() == b"v"
    finally:
        await store.close()


async def test_relative_path_resolves_against_data_dir(tmp_path: Path) -> None:
    store = await open_blob_store("blobs", data_dir=tmp_path)
    try:
        assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "blobs"
    finally:
        await store.close()


async def test_local_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        await open_blob_store(str(tmp_path / "file"))


async def test_local_path_not_creatable() -> None:
    # /proc refuses mkdir even to root.
    with pytest.raises(Unavailable, match="cannot create blob store directory"):
        await open_blob_store("/proc/self/sessiond-blobs")


# -- s3 ----------------------------------------------------------------------------


async def test_s3_url_opens_a_working_store(s3_blob_url: str) -> None:
    store = await open_blob_store(s3_blob_url)
    try:
        assert isinstance(store, S3BlobStore)
        await store.ping()
        await store.put("k", b"v")
        assert await store.get("k") == b"v"
        assert "sessiond-test-secret" not in repr(store)
    finally:
        await store.close()


async def test_s3_credentials_from_the_environment(
    s3_server: S3Server, s3_blob_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    base, _, query = s3_blob_url.partition("?")
    params = [p for p in query.split("&") if not p.startswith(("access_key=", "secret_key="))]
    store = await open_blob_store(f"{base}?{'&'.join(params)}")
    try:
        await store.ping()
        await store.put("k", b"v")
    finally:
        await store.close()
