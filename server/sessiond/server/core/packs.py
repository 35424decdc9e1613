"""Packs: how chunks are laid out in blob storage, and the verification of
an uploaded pack.

A stored pack is the concatenation of its chunks' stored frames: each zstd
frame as the hydrator uploaded it, sealed (or prefixed with the plain format
byte) by :mod:`.sealing`; the chunk index's offsets and lengths refer to
these stored bytes. Its id is the BLAKE3 of its bytes; sealing is
deterministic, so a retried upload writes the same object. Blob keys::

    t/<tenant>/packs/<id[:2]>/<id>
    t/<tenant>/manifests/<id>
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from sessiond.client import workspace_format as fmt
from sessiond.client.errors import InvalidArgument, ResourceExhausted

from .limits import WorkspaceLimits
from .sealing import Sealer, chunk_aad

KINDS = {1: "data", 2: "tree"}


def tenant_prefix(tenant_id: str) -> str:
    """The blob-key prefix of every object of the tenant."""
    return f"t/{tenant_id}/"


def pack_key(tenant_id: str, pack_id: str) -> str:
    return f"t/{tenant_id}/packs/{pack_id[:2]}/{pack_id}"


def manifest_key(tenant_id: str, manifest_id: str) -> str:
    return f"t/{tenant_id}/manifests/{manifest_id}"


def pack_id(data: bytes | bytearray) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """One chunk as a PutPack header announces it."""

    chunk_id: bytes
    kind: str
    length: int
    raw_length: int


def check_header(chunks: list[ChunkSpec], limits: WorkspaceLimits) -> int:
    """Validate a pack header; return the total announced data length."""
    if not chunks:
        raise InvalidArgument("pack header lists no chunks")
    if len(chunks) > limits.max_chunks_per_request:
        raise ResourceExhausted(
            f"pack of {len(chunks)} chunks, over the limit of {limits.max_chunks_per_request}"
        )
    total = 0
    for i, c in enumerate(chunks):
        if len(c.chunk_id) != fmt.CHUNK_ID_BYTES:
            raise InvalidArgument(f"chunks[{i}]: chunk id must be {fmt.CHUNK_ID_BYTES} bytes")
        if c.length <= 0 or c.raw_length < 0:
            raise InvalidArgument(f"chunks[{i}]: lengths must be positive")
        if c.raw_length > limits.max_chunk_bytes:
            raise ResourceExhausted(
                f"chunks[{i}]: {c.raw_length} bytes, over the chunk limit of "
                f"{limits.max_chunk_bytes}"
            )
        total += c.length
    if total > limits.max_pack_bytes:
        raise ResourceExhausted(f"pack of {total} bytes, over the limit of {limits.max_pack_bytes}")
    return total


def _verify_frame(key: bytes, i: int, c: ChunkSpec, frame: memoryview) -> None:
    try:
        plain = fmt.open_chunk(key, c.chunk_id, frame, c.raw_length)
    except Exception as exc:
        raise InvalidArgument(f"chunks[{i}] ({c.chunk_id.hex()[:16]}…): {exc}") from None
    if c.kind == "tree":
        try:
            fmt.parse_tree(plain)
        except InvalidArgument as exc:
            raise InvalidArgument(f"chunks[{i}] is not a valid tree: {exc}") from None


def verify_frames(key: bytes, chunks: list[ChunkSpec], data: bytes | bytearray) -> None:
    """Check every frame of an uploaded pack against its chunk id and kind.
    Raises ``InvalidArgument`` naming the first bad chunk — a sandbox must not
    be able to plant wrong bytes under an id (dedup would hand them to every
    other session of the tenant)."""
    view = memoryview(data)
    offset = 0
    for i, c in enumerate(chunks):
        _verify_frame(key, i, c, view[offset : offset + c.length])
        offset += c.length


@dataclass(frozen=True, slots=True)
class SealedPack:
    """An uploaded pack, verified and in its stored form."""

    pack_id: str
    data: bytes
    # Stored length of each chunk, in header order (offsets follow).
    lengths: list[int]


def seal_pack(
    key: bytes, sealer: Sealer, chunks: list[ChunkSpec], data: bytes | bytearray
) -> SealedPack:
    """Verify every frame of an uploaded pack (as :func:`verify_frames`) and
    seal it under its chunk id: the pack as it is to be stored. CPU-bound:
    call in a worker thread. Consumes ``data``: a bytearray is emptied
    before the stored form is copied out, so at most about twice the pack
    size is held at any moment."""
    view = memoryview(data)
    out = bytearray(len(data) + sealer.overhead * len(chunks))
    sink = memoryview(out)
    lengths: list[int] = []
    offset = at = 0
    frame = view[:0]
    for i, c in enumerate(chunks):
        frame = view[offset : offset + c.length]
        offset += c.length
        _verify_frame(key, i, c, frame)
        n = sealer.seal_into(sink[at:], chunk_aad(c.chunk_id), frame)
        lengths.append(n)
        at += n
    del sink, view, frame
    if isinstance(data, bytearray):
        data.clear()
    stored = bytes(out)
    del out
    return SealedPack(pack_id=pack_id(stored), data=stored, lengths=lengths)
