"""Open a BlobStore from a URL: the backend is chosen by scheme.

::

    file:///abs/dir                   LocalBlobStore (the directory is created)
    /abs/dir, rel/dir                 LocalBlobStore (relative to data_dir, else the cwd)
    s3://bucket[/prefix][?params]     S3BlobStore

S3 parameters (values percent-encoded; ``+`` is a literal plus)::

    endpoint=http://127.0.0.1:8333    S3 API endpoint (default: AWS for the region)
    region=us-east-1                  default us-east-1
    create_bucket=1                   create the bucket at open if missing
    access_key=…&secret_key=…         default: boto3's chain (AWS_* env, profile, role)
    session_token=…                   with access_key/secret_key only
    connect_timeout=5&read_timeout=60 seconds
    max_attempts=5                    tries per request, the first included

Every malformed URL raises ``InvalidArgument`` naming what is wrong and never
containing a credential. Log URLs only through :func:`redact_url`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sessiond.client.errors import InvalidArgument, Unavailable

from .blob import _COMPONENT, BlobStore
from .local_blob import LocalBlobStore
from .s3_blob import S3BlobStore

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_REGION = re.compile(r"^[a-z0-9-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Parameters whose values may be shown; every other value is a secret to redact.
_PUBLIC_PARAMS = frozenset(
    {"endpoint", "region", "create_bucket", "connect_timeout", "read_timeout", "max_attempts"}
)
_SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token"})


@dataclass(frozen=True, slots=True)
class S3Location:
    """A parsed ``s3://`` URL; credentials are kept out of ``repr``."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    create_bucket: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


def _query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for segment in query.split("&"):
        if not segment:
            continue
        raw_name, sep, raw_value = segment.partition("=")
        name = unquote(raw_name)
        # Echo a name only if it looks like one: a stray value must not leak.
        shown = repr(name) if _NAME.match(name) else "(unprintable)"
        if not sep:
            raise InvalidArgument(f"S3 URL parameter {shown} has no value")
        if name not in _PUBLIC_PARAMS | _SECRET_PARAMS:
            known = ", ".join(sorted(_PUBLIC_PARAMS | _SECRET_PARAMS))
            raise InvalidArgument(f"unknown S3 URL parameter {shown} (known: {known})")
        if name in params:
            raise InvalidArgument(f"S3 URL parameter {shown} given twice")
        value = unquote(raw_value)
        if not value:
            raise InvalidArgument(f"S3 URL parameter {shown} is empty")
        params[name] = value
    return params


def _endpoint(value: str) -> str:
    if "@" in value:
        raise InvalidArgument("S3 endpoint must not carry credentials (use access_key/secret_key)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        # Not chained: the parser's message quotes the input.
        raise InvalidArgument("S3 endpoint is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(
            f"S3 endpoint must be an http:// or https:// URL, not scheme {parts.scheme!r}"
        )
    if not parts.hostname:
        raise InvalidArgument("S3 endpoint has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgument("S3 endpoint must be scheme://host[:port] with no path or query")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _number(params: dict[str, str], name: str, default: float, *, integer: bool = False) -> float:
    if name not in params:
        return default
    try:
        value = int(params[name]) if integer else float(params[name])
    except ValueError:
        value = -1
    if not value > 0 or value == float("inf"):
        raise InvalidArgument(f"S3 URL parameter {name!r} must be a positive number")
    return value


def parse_s3_url(url: str) -> S3Location:
    """Parse ``s3://bucket[/prefix][?params]``; ``InvalidArgument`` if malformed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidArgument("malformed S3 URL") from None  # its message quotes the URL
    if parts.scheme.lower() != "s3":
        raise InvalidArgument("not an s3:// URL")
    if "#" in url:
        raise InvalidArgument("S3 URL has a '#' fragment (percent-encode '#' in values as %23)")
    # A password may hold '/', which ends urlsplit's netloc early: look at
    # everything before the query, and never echo an authority with ':'.
    if "@" in url.partition("?")[0] or ":" in parts.netloc:
        raise InvalidArgument(
            "S3 URL authority must be just the bucket (no credentials or port); use the "
            "access_key and secret_key parameters"
        )
    bucket = parts.netloc
    if not bucket:
        raise InvalidArgument("S3 URL has no bucket (s3://bucket[/prefix])")
    if (
        not _BUCKET.match(bucket)
        or ".." in bucket
        or _IPV4.match(bucket)
        or bucket.startswith("xn--")
        or bucket.endswith("-s3alias")
    ):
        raise InvalidArgument(
            f"bad S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    prefix = unquote(parts.path).strip("/")
    for part in prefix.split("/") if prefix else ():
        if part in (".", "..") or not _COMPONENT.match(part):
            raise InvalidArgument(f"bad S3 prefix component {part!r} (allowed: A-Z a-z 0-9 . _ -)")
    params = _query(parts.query)
    region = params.get("region", "us-east-1")
    if not _REGION.match(region):
        raise InvalidArgument(f"bad S3 region {region!r}")
    create = params.get("create_bucket", "0").lower()
    if create not in _TRUE | _FALSE:
        raise InvalidArgument("S3 URL parameter 'create_bucket' must be 1/0/true/false")
    access_key = params.get("access_key")
    secret_key = params.get("secret_key")
    token = params.get("session_token")
    if (access_key is None) != (secret_key is None):
        raise InvalidArgument("S3 URL parameters 'access_key' and 'secret_key' go together")
    if token is not None and access_key is None:
        raise InvalidArgument("S3 URL parameter 'session_token' needs access_key and secret_key")
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=_endpoint(params["endpoint"]) if "endpoint" in params else None,
        region=region,
        create_bucket=create in _TRUE,
        connect_timeout=_number(params, "connect_timeout", 5.0),
        read_timeout=_number(params, "read_timeout", 60.0),
        max_attempts=int(_number(params, "max_attempts", 5, integer=True)),
        access_key=access_key,
        secret_key=secret_key,
        session_token=token,
    )


def parse_local_url(url: str, *, data_dir: Path | None = None) -> Path:
    """The directory named by ``file:///abs/dir`` or a plain path (a relative
    one resolves against ``data_dir``, else the working directory)."""
    if not url:
        raise InvalidArgument("empty blob store URL")
    if _SCHEME.match(url):
        try:
            parts = urlsplit(url)
        except ValueError:
            raise InvalidArgument("malformed blob store URL") from None
        if parts.scheme.lower() != "file":
            raise InvalidArgument(f"unknown blob store URL scheme {parts.scheme!r} (file, s3)")
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument("file: URLs name a local directory (file:///abs/dir)")
        if parts.query or parts.fragment:
            raise InvalidArgument("file: URLs take no query or fragment")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise InvalidArgument("file: URLs need an absolute path (file:///abs/dir)")
        return path
    path = Path(url)
    if not path.is_absolute():
        path = (data_dir or Path.cwd()) / path
    return path.absolute()


async def open_blob_store(url: str, *, data_dir: Path | None = None) -> BlobStore:
    """Parse ``url`` and open the store it names.

    ``InvalidArgument`` for a malformed URL; ``Unavailable`` if the store
    cannot be prepared (directory not creatable, bucket creation failed).
    Callers should then :meth:`~BlobStore.ping` it.
    """
    match = _SCHEME.match(url)
    if match and match.group(1).lower() == "s3":
        loc = parse_s3_url(url)
        store = S3BlobStore(
            bucket=loc.bucket,
            prefix=loc.prefix,
            endpoint_url=loc.endpoint_url,
            region=loc.region,
            access_key=loc.access_key,
            secret_key=loc.secret_key,
            session_token=loc.session_token,
            create_bucket=loc.create_bucket,
            connect_timeout=loc.connect_timeout,
            read_timeout=loc.read_timeout,
            max_attempts=loc.max_attempts,
        )
        try:
            await store.open()
        except BaseException:
            await store.close()
            raise
        return store
    root = parse_local_url(url, data_dir=data_dir)
    try:
        await asyncio.to_thread(root.mkdir, 0o700, True, True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InvalidArgument(f"blob store path {root} is not a directory") from exc
    except OSError as exc:
        raise Unavailable(f"cannot create blob store directory {root}: {exc.strerror}") from exc
    return LocalBlobStore(root)


def redact_url(url: str) -> str:
    """``url`` fit for logs: credentials in the authority and the value of
    every query parameter not known to be harmless become ``***``; a fragment
    is dropped. Never raises.

    Works on the raw string rather than ``urlsplit``: a password may contain
    ``/``, which would end the parsed authority early and leave it visible.
    """
    base, has_query, query = url.partition("?")
    base = base.partition("#")[0]
    query = query.partition("#")[0]
    scheme, sep, rest = base.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    segments = []
    for segment in query.split("&") if query else ():
        raw_name, sep_eq, raw_value = segment.partition("=")
        name = unquote(raw_name)
        if not sep_eq:
            segments.append("***")
        elif name in _PUBLIC_PARAMS and "@" not in unquote(raw_value):
            segments.append(segment)
        else:
            segments.append(f"{raw_name}=***" if _NAME.match(name) else "***=***")
    redacted = scheme + sep + rest
    return f"{redacted}?{'&'.join(segments)}" if has_query else redacted
