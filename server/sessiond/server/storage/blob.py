"""The BlobStore protocol: where packs of chunks and manifests live.

Implementations: :class:`~sessiond.server.storage.local_blob.LocalBlobStore`
(a directory; the embedded default) and
:class:`~sessiond.server.storage.s3_blob.S3BlobStore` (any S3 API). Every
implementation runs the contract suite in ``tests/contracts/test_blob_store.py``.

Keys are ``/``-separated relative paths made of ``[A-Za-z0-9._-]`` components
(no empty, ``.`` or ``..`` component, at most 1024 bytes). A malformed key
raises :class:`~sessiond.client.errors.InvalidArgument` before any I/O.
Portable keys also avoid two things a file-system backend cannot hold (it
raises ``InvalidArgument`` for them): a key that is a ``/``-prefix of another
(``a`` and ``a/b``), and a component longer than 255 bytes.

Errors are translated at this edge: a missing object raises ``NotFound``, an
unreachable or failing backend raises ``Unavailable`` (after the backend's own
bounded retries), a stored object whose bytes do not match what was written
raises ``DataLoss``. Nothing else escapes. A method called after
:meth:`BlobStore.close` raises ``Unavailable``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sessiond.client.errors import InvalidArgument

MAX_KEY_BYTES = 1024
KEY_COMPONENT = re.compile(r"^[A-Za-z0-9._-]+$")
_COMPONENT = KEY_COMPONENT


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


def validate_key(key: str) -> str:
    """Return ``key`` if it is a well-formed blob key, else raise InvalidArgument."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("blob key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"blob key longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if part in ("", ".", "..") or not _COMPONENT.match(part):
            raise InvalidArgument(f"malformed blob key {key!r}: bad component {part!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key optionally ending in ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@runtime_checkable
class BlobStore(Protocol):
    """Immutable-object storage. Objects are written once and never modified.

    All methods are safe to call concurrently from many tasks.
    """

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store ``data`` under ``key`` atomically: a reader sees either the old
        object (or none) or all of ``data``, never a prefix.

        The payload's checksum is verified by the backend on write (S3
        ``ChecksumSHA256``; fsync before rename locally). Overwrites an existing
        object unless ``if_absent`` is set, in which case an existing object
        raises ``AlreadyExists`` and is left untouched.
        """
        ...

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the concatenation of ``chunks`` under ``key``; return its size.

        For objects too large to hold in memory: memory use is bounded by the
        backend's part size whatever the total. Atomic like :meth:`put`; if the
        iterator raises, nothing becomes visible and the exception propagates.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The whole object. ``NotFound`` if absent."""
        ...

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``. ``NotFound`` if absent;
        ``InvalidArgument`` for a negative offset/length; ``DataLoss`` if the
        object is shorter than ``offset + length`` (a stored pack that lost its
        tail is damage, not a short read)."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream the object in pieces of at most ``chunk_size`` bytes.
        ``NotFound`` (raised on first iteration) if absent."""
        ...

    async def stat(self, key: str) -> BlobInfo:
        """Size of the object. ``NotFound`` if absent."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the object. Idempotent: deleting a missing key succeeds."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Every object whose key starts with ``prefix``, each once, in key
        order. Not a snapshot: objects written or deleted meanwhile may or
        may not appear.

        Key order is plain string order, with one latitude: when sibling
        components extend one another with ``-`` or ``.`` (``a/x`` vs
        ``a-b``), file-system-like servers (SeaweedFS) list component by
        component (``a/x`` first) while AWS S3 and LocalBlobStore list in
        string order (``a-b`` first). Callers that depend on the order use
        keys without such siblings (e.g. fixed-width hex names)."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless the backend is reachable and usable."""
        ...

    async def close(self) -> None:
        """Release connections and threads, after letting calls in flight
        finish. Idempotent; every later call raises ``Unavailable``."""
        ...
