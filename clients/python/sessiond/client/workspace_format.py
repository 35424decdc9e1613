"""The workspace snapshot format, shared by server and hydrator.

* A **chunk** is a piece of file content (or a serialized :class:`Tree`); its
  id is the 32-byte keyed BLAKE3 of its plaintext under the tenant's chunk
  key, so ids never reveal content across tenants. On the wire and in packs a
  chunk travels as one zstd frame.
* A **tree** is one directory: ``sessiond.v1.Tree`` with its nodes sorted by
  name, serialized deterministically; its chunk id is its content address, so
  an unchanged directory keeps its id across snapshots (restic's trees).
* A **manifest** (``sessiond.v1.Manifest``) names the root tree and the
  Claude-config tree; its id is the hex keyed BLAKE3 of its bytes.

Everything here validates hostile input: a tree that breaks a rule raises
``InvalidArgument`` naming the rule. Needs ``blake3`` and ``zstandard`` (the
``hydrator`` or ``server`` extra).
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterable

import blake3
import zstandard

from sessiond.api.v1 import format_pb2

from .errors import DataLoss, InvalidArgument

CHUNK_ID_BYTES = 32
FORMAT_VERSION = 1
MAX_NAME_BYTES = 255
# Permission bits kept on restore: no setuid, setgid or sticky bit.
MODE_MASK = 0o777

FILE = format_pb2.NODE_TYPE_FILE
DIR = format_pb2.NODE_TYPE_DIR
SYMLINK = format_pb2.NODE_TYPE_SYMLINK

_ZSTD_LEVEL = 1


def chunk_id(key: bytes, data: bytes | memoryview) -> bytes:
    """Keyed BLAKE3 of ``data`` (32 bytes)."""
    return blake3.blake3(data, key=key).digest()


def manifest_id(key: bytes, data: bytes) -> str:
    return blake3.blake3(data, key=key).hexdigest()


# zstd contexts are costly to create (tens of µs, more than compressing a
# small chunk) and not safe to share between threads: one of each per thread.
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        # Frames carry their content size, so decompression can be bounded.
        cctx = _local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compress(data: bytes | memoryview) -> bytes:
    return _compressor().compress(data)


def decompress(frame: bytes | memoryview, raw_length: int) -> bytes:
    """Decompress one frame that must inflate to exactly ``raw_length`` bytes
    (``DataLoss`` otherwise — never allocate more than promised)."""
    try:
        # A frame that announces another size is refused before anything is
        # allocated for it.
        announced = zstandard.frame_content_size(frame)
        if announced not in (-1, raw_length):
            raise DataLoss(f"chunk announces {announced} bytes, expected {raw_length}")
        out: bytes = _decompressor().decompress(frame, max_output_size=max(raw_length, 1))
    except zstandard.ZstdError as exc:
        raise DataLoss(f"chunk does not decompress: {exc}") from None
    if len(out) != raw_length:
        raise DataLoss(f"chunk inflates to {len(out)} bytes, expected {raw_length}")
    return out


def open_chunk(key: bytes, expected_id: bytes, frame: bytes | memoryview, raw_length: int) -> bytes:
    """Decompress and verify a chunk against its id; ``DataLoss`` if it does
    not match (corrupted or substituted data)."""
    data = decompress(frame, raw_length)
    if chunk_id(key, data) != expected_id:
        raise DataLoss(f"chunk {expected_id.hex()[:16]}… does not match its id")
    return data


def check_name(name: bytes) -> bytes:
    if not name:
        raise InvalidArgument("empty file name in tree")
    if name in (b".", b".."):
        raise InvalidArgument(f"tree entry named {name!r}")
    if b"/" in name or b"\0" in name:
        raise InvalidArgument(f"tree entry name {name[:60]!r} contains '/' or NUL")
    if len(name) > MAX_NAME_BYTES:
        raise InvalidArgument(f"tree entry name of {len(name)} bytes exceeds {MAX_NAME_BYTES}")
    return name


def serialize_tree(nodes: Iterable[format_pb2.Node]) -> bytes:
    """Deterministic bytes of a tree; nodes are sorted by name here."""
    ordered: list[format_pb2.Node] = sorted(nodes, key=_node_name)
    return format_pb2.Tree(nodes=ordered).SerializeToString(deterministic=True)


def _node_name(node: format_pb2.Node) -> bytes:
    return node.name


def parse_tree(data: bytes) -> format_pb2.Tree:
    """Parse and validate a tree: names legal, sorted, unique; types known;
    per-type fields consistent. ``InvalidArgument`` names the violation."""
    tree = format_pb2.Tree()
    try:
        tree.ParseFromString(data)
    except Exception:
        raise InvalidArgument("tree object does not parse") from None
    previous: bytes | None = None
    for node in tree.nodes:
        check_name(node.name)
        if previous is not None and node.name <= previous:
            kind = "duplicate" if node.name == previous else "unsorted"
            raise InvalidArgument(f"{kind} tree entry {node.name[:60]!r}")
        previous = node.name
        if node.type == FILE:
            if node.size < 0:
                raise InvalidArgument(f"file {node.name[:60]!r} has a negative size")
            if any(len(c) != CHUNK_ID_BYTES for c in node.chunk_ids):
                raise InvalidArgument(f"file {node.name[:60]!r} has a malformed chunk id")
            if node.size > 0 and not node.chunk_ids:
                raise InvalidArgument(f"file {node.name[:60]!r} has a size but no chunks")
        elif node.type == DIR:
            if len(node.subtree_id) != CHUNK_ID_BYTES:
                raise InvalidArgument(f"directory {node.name[:60]!r} has no valid subtree id")
        elif node.type == SYMLINK:
            if not node.link_target or b"\0" in node.link_target:
                raise InvalidArgument(f"symlink {node.name[:60]!r} has an invalid target")
        else:
            raise InvalidArgument(f"tree entry {node.name[:60]!r} has unknown type {node.type}")
    return tree


def parse_manifest(data: bytes) -> format_pb2.Manifest:
    manifest = format_pb2.Manifest()
    try:
        manifest.ParseFromString(data)
    except Exception:
        raise InvalidArgument("manifest does not parse") from None
    if manifest.version != FORMAT_VERSION:
        raise InvalidArgument(f"unsupported manifest version {manifest.version}")
    if len(manifest.root_tree_id) != CHUNK_ID_BYTES:
        raise InvalidArgument("manifest has no valid root tree id")
    if manifest.config_tree_id and len(manifest.config_tree_id) != CHUNK_ID_BYTES:
        raise InvalidArgument("manifest has a malformed config tree id")
    return manifest


def node_mode(st_mode: int) -> int:
    """Permission bits to record for a file system entry."""
    return stat.S_IMODE(st_mode) & MODE_MASK
