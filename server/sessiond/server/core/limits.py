"""Workspace limits the server enforces and hands to hydrators."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkspaceLimits:
    # Stored bytes of one PutPack.
    max_pack_bytes: int = 32 << 20
    # Plaintext bytes of one chunk.
    max_chunk_bytes: int = 8 << 20
    # Entries (files, dirs, symlinks) of one workspace.
    max_files: int = 500_000
    # Logical bytes of one workspace.
    max_total_bytes: int = 20 << 30
    max_name_bytes: int = 255
    max_depth: int = 256
    # Ids per MissingChunks / GetChunks request.
    max_chunks_per_request: int = 10_000
    # Serialized manifest bytes.
    max_manifest_bytes: int = 1 << 20
