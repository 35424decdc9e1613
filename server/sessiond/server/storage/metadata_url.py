"""Pick a MetadataStore by URL scheme (the only place that parses its URL).

==============================================  ===============================
``sqlite:///abs/path.db``                       SqliteMetadataStore, absolute path
``sqlite:relative/path.db``                     SqliteMetadataStore, relative to the cwd
``sqlite::memory:``                             SqliteMetadataStore in memory (tests)
``postgresql://user:pw@host:5432/db?…``         PostgresMetadataStore (``postgres://`` too)
==============================================  ===============================

PostgreSQL URLs are handed to asyncpg as they are, so libpq-style query
parameters work and unknown ones become server settings
(``?search_path=myschema`` puts sessiond's tables in that schema).

Errors: a malformed URL or an unknown scheme raises ``InvalidArgument`` naming
the problem; an unreachable database raises ``Unavailable`` with one line
naming host and port. Neither ever contains the password: log URLs only
through :func:`redact_dsn`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from sessiond.client.errors import InvalidArgument

from .metadata import MetadataStore
from .postgres_meta import DEFAULT_POOL_MAX_SIZE, PostgresMetadataStore
from .sqlite_meta import SqliteMetadataStore

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


async def open_metadata_store(
    url: str, *, pool_max_size: int = DEFAULT_POOL_MAX_SIZE
) -> MetadataStore:
    """Open (and migrate) the metadata store ``url`` names.

    ``pool_max_size`` bounds the PostgreSQL connection pool; SQLite always
    uses one connection.
    """
    scheme = _scheme(url)
    if scheme == "sqlite":
        return await SqliteMetadataStore.open(sqlite_path(url))
    if scheme in _POSTGRES_SCHEMES:
        _check_postgres_url(url)
        return await PostgresMetadataStore.open(url, max_size=pool_max_size)
    raise InvalidArgument(
        f"unknown metadata store scheme {scheme!r} in {redact_dsn(url)!r}:"
        " expected sqlite:, postgresql: or postgres:"
    )


def _scheme(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("metadata store URL is empty")
    m = _SCHEME.match(url)
    if m is None:
        raise InvalidArgument(
            f"metadata store URL {redact_dsn(url)!r} has no scheme:"
            " expected sqlite:///path.db or postgresql://host/db"
        )
    return m.group(1).lower()


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL (percent-decoded), or ``:memory:``."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidArgument(f"sqlite URL {url!r} takes no query or fragment")
    if parts.netloc:
        raise InvalidArgument(
            f"sqlite URL {url!r} names a host; use sqlite:///abs/path.db or sqlite:rel/path.db"
        )
    path = unquote(parts.path)
    if path in ("", "/"):
        raise InvalidArgument(f"sqlite URL {url!r} names no database file")
    if path in (":memory:", "/:memory:"):
        return ":memory:"
    if path.endswith("/"):
        raise InvalidArgument(f"sqlite URL {url!r} names a directory, not a file")
    if "\0" in path:
        raise InvalidArgument("sqlite URL contains a NUL character")
    return path


def _check_postgres_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise InvalidArgument(f"malformed PostgreSQL URL {redact_dsn(url)!r}: {exc}") from exc


def redact_dsn(url: str) -> str:
    """``url`` with any password (in the userinfo or a ``password=`` query
    parameter) replaced by ``***``; safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Too malformed to parse: hide everything between "//" and "@".
        return re.sub(r"//[^@/]*@", "//***@", url)
    out = url
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        out = out.replace(f"//{parts.netloc}", f"//{user}:***@{hosts}", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", out)
