"""Encryption at rest: the master key, tenants' data keys, sealed objects.

Key hierarchy::

    master key   32 bytes given to the server (file or environment), never stored
     └─ wraps each tenant's data key (DEK: 32 random bytes, stored only wrapped,
        in tenants.wrapped_dek next to the id of the master key that wrapped it)
         └─ seals the tenant's stored chunks and manifests (AES-256-GCM)

Every stored chunk frame (inside a pack) and every stored manifest starts with
one format byte, so a store can hold both kinds and the mode can change::

    0x00 | bytes                                      stored as-is (--encryption off)
    0x01 | nonce (12) | ciphertext | GCM tag (16)     sealed with the tenant's DEK

The associated data is the object's id (``chunk_aad`` / ``manifest_aad``):
sealed bytes moved under another id, or into another tenant (another DEK),
fail to open with ``DataLoss``. Objects written before sealing existed (a
bare zstd frame, a bare manifest) are recognised by their first bytes and
read as-is; their ids are still verified downstream.

Nonces are synthetic (SIV-style): the keyed BLAKE3, under a subkey of the
DEK, of the associated data and the plaintext. The same object sealed twice
gives the same bytes — a retried PutPack writes the same pack object under
the same pack id, as before encryption — while two different plaintexts
get nonces as unrelated as random ones (the usual 2^32-messages-per-key
bound of 96-bit random nonces applies). A reader never recomputes the
nonce: the frame carries it.

Nothing here logs or ``repr``s key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessiond.client.errors import DataLoss, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

FORMAT_PLAIN = 0x00
FORMAT_AES256GCM = 0x01
PLAIN_OVERHEAD = 1
SEALED_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES

# Objects stored before sealing existed carry no format byte: a zstd frame
# starts with its magic number, a manifest with the tag of field 1 (version).
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BARE_MANIFEST = 0x08

# BLAKE3 derive_key contexts: one subkey per purpose, never the raw key.
_CTX_MASTER_ID = "sessiond 2025 master key id"
_CTX_KEK = "sessiond 2025 data key wrapping"
_CTX_AEAD = "sessiond 2025 stored object AES-256-GCM"
_CTX_NONCE = "sessiond 2025 stored object synthetic nonce"

# Recent cryptography releases seal straight into a caller's buffer (no
# per-object allocation); with older ones (>= 42 is required) we copy.
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")


def _subkey(context: str, key: bytes) -> bytes:
    return blake3.blake3(key, derive_key_context=context).digest()


class KeyUnavailable(FailedPrecondition):
    """A sealed object, but no data key to open it with (encryption off and
    no master key, or a data key created after this sealer was made)."""


# -- the master key ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The server's key-encryption key. ``key_id`` (8 hex digits of a hash of
    the key) is stored beside every wrapped DEK, so a server started with
    another key says so instead of producing garbage."""

    key: bytes = field(repr=False)
    key_id: str

    @classmethod
    def from_bytes(cls, key: bytes) -> MasterKey:
        if len(key) != KEY_BYTES:
            raise InvalidArgument(f"a master key is {KEY_BYTES} bytes, not {len(key)}")
        return cls(key=bytes(key), key_id=_subkey(_CTX_MASTER_ID, key).hex()[:8])

    @classmethod
    def generate(cls) -> MasterKey:
        return cls.from_bytes(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def parse(cls, text: str | bytes) -> MasterKey:
        """32 bytes written as hex (64 digits) or base64 (standard or URL-safe),
        surrounding whitespace ignored; ``InvalidArgument`` otherwise. The
        message never echoes the input."""
        raw = text.encode() if isinstance(text, str) else bytes(text)
        value = raw.strip()
        decoded: bytes | None = None
        if len(value) == 2 * KEY_BYTES:
            with contextlib.suppress(ValueError):
                decoded = bytes.fromhex(value.decode("ascii"))
        if decoded is None:
            padded = value + b"=" * (-len(value) % 4)
            for altchars in (None, b"-_"):
                try:
                    candidate = base64.b64decode(padded, altchars=altchars, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if len(candidate) == KEY_BYTES:
                    decoded = candidate
                    break
        if decoded is None or len(decoded) != KEY_BYTES:
            raise InvalidArgument(f"expected {KEY_BYTES} bytes written as base64 or hex")
        return cls.from_bytes(decoded)

    def encode(self) -> str:
        """The form :meth:`parse` reads and the generated key file holds."""
        return base64.b64encode(self.key).decode()

    def _aad(self, tenant_id: str) -> bytes:
        return b"sessiond/dek\0" + tenant_id.encode() + b"\0" + self.key_id.encode()

    def wrap_dek(self, tenant_id: str, dek: bytes) -> bytes:
        """``0x01 | nonce | AES-256-GCM(dek)`` under a subkey of the master key,
        bound to the tenant and this key's id."""
        if len(dek) != KEY_BYTES:
            raise InvalidArgument(f"a data key is {KEY_BYTES} bytes")
        nonce = secrets.token_bytes(NONCE_BYTES)
        kek = AESGCM(_subkey(_CTX_KEK, self.key))
        return bytes([FORMAT_AES256GCM]) + nonce + kek.encrypt(nonce, dek, self._aad(tenant_id))

    def unwrap_dek(self, tenant_id: str, wrapped: bytes, master_id: str) -> bytes:
        """The tenant's DEK. ``FailedPrecondition`` if another master key
        wrapped it (the server runs with the wrong key); ``DataLoss`` if the
        wrapped key does not authenticate (damaged, or copied from another
        tenant)."""
        if master_id != self.key_id:
            raise FailedPrecondition(
                f"tenant {tenant_id!r}: its data key is wrapped by master key {master_id},"
                f" but this server's master key is {self.key_id} (wrong master key?)"
            )
        if len(wrapped) != 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES or (
            wrapped[0] != FORMAT_AES256GCM
        ):
            raise DataLoss(f"tenant {tenant_id!r}: the stored data key is malformed")
        kek = AESGCM(_subkey(_CTX_KEK, self.key))
        try:
            return kek.decrypt(wrapped[1:13], wrapped[13:], self._aad(tenant_id))
        except InvalidTag:
            raise DataLoss(
                f"tenant {tenant_id!r}: the stored data key does not authenticate under"
                f" master key {self.key_id}"
            ) from None


def new_dek() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def read_master_key_file(path: Path) -> MasterKey:
    """The key in ``path``: its text (base64 or hex) or exactly 32 raw bytes.
    ``InvalidArgument`` naming the path if unreadable or malformed. Warns when
    the file is readable by group or others."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("master key file %s is accessible to group/others (chmod 600 it)", path)
    if len(raw) == KEY_BYTES:
        return MasterKey.from_bytes(raw)
    try:
        return MasterKey.parse(raw)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc}") from None


def load_or_create_master_key(path: Path) -> tuple[MasterKey, bool]:
    """The embedded default: the key in ``path``, generated (mode 0600) if the
    file does not exist. Returns (key, created). Concurrent first starts agree
    on one key: it is written to a temporary file and linked into place, which
    fails if another process got there first (whose key is then read)."""
    if path.exists():
        return read_master_key_file(path), False
    key = MasterKey.generate()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (key.encode() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_master_key_file(path), False
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot create: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return key, True


# -- sealing -------------------------------------------------------------------


def chunk_aad(chunk_id: bytes) -> bytes:
    return b"sessiond/chunk\0" + chunk_id


def manifest_aad(manifest_id: str) -> bytes:
    return b"sessiond/manifest\0" + manifest_id.encode()


class Sealer:
    """Seals and opens one tenant's stored objects. ``dek`` None: nothing can
    be sealed or opened sealed (``KeyUnavailable``); ``encrypt`` False: new
    objects are stored as-is (format 0x00) — sealed ones still open.

    Stateless after construction, so one sealer may be used from several
    threads at once (sealing runs in worker threads)."""

    def __init__(self, dek: bytes | None, *, encrypt: bool) -> None:
        if encrypt and dek is None:
            raise ValueError("sealing needs a data key")
        self.encrypt = encrypt
        self._aead: AESGCM | None = None
        self._nonce_key = b""
        if dek is not None:
            self._aead = AESGCM(_subkey(_CTX_AEAD, dek))
            self._nonce_key = _subkey(_CTX_NONCE, dek)

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    @property
    def overhead(self) -> int:
        """Stored bytes added to every object sealed now."""
        return SEALED_OVERHEAD if self.encrypt else PLAIN_OVERHEAD

    def _nonce(self, aad: bytes, data: bytes | bytearray | memoryview) -> bytes:
        h = blake3.blake3(len(aad).to_bytes(4, "big") + aad, key=self._nonce_key)
        h.update(data)
        return h.digest(length=NONCE_BYTES)

    def seal_into(self, out: memoryview, aad: bytes, data: bytes | bytearray | memoryview) -> int:
        """Write the stored form of ``data`` at the start of ``out`` (at least
        ``len(data) + overhead`` bytes); return its length."""
        n = len(data) + self.overhead
        if not self.encrypt:
            out[0] = FORMAT_PLAIN
            out[1:n] = data
            return n
        assert self._aead is not None
        nonce = self._nonce(aad, data)
        out[0] = FORMAT_AES256GCM
        out[1 : 1 + NONCE_BYTES] = nonce
        body = out[1 + NONCE_BYTES : n]
        if _HAS_ENCRYPT_INTO:
            self._aead.encrypt_into(nonce, data, aad, body)
        else:  # pragma: no cover - older cryptography
            body[:] = self._aead.encrypt(nonce, bytes(data), aad)
        return n

    def seal(self, aad: bytes, data: bytes | bytearray | memoryview) -> bytes:
        out = bytearray(len(data) + self.overhead)
        self.seal_into(memoryview(out), aad, data)
        return bytes(out)

    def open(
        self, aad: bytes, stored: bytes | memoryview, what: str, *, bare_ok: bool = False
    ) -> bytes:
        """The plaintext of a stored object. ``DataLoss`` naming ``what`` if
        it does not authenticate or has an unknown format; ``KeyUnavailable``
        if it is sealed and this sealer has no key. ``bare_ok``: the caller
        recognised a pre-sealing object (see :func:`open_chunk`)."""
        view = memoryview(stored)
        if not view:
            raise DataLoss(f"{what}: stored object is empty")
        kind = view[0]
        if kind == FORMAT_AES256GCM:
            if self._aead is None:
                raise KeyUnavailable(f"{what} is encrypted, but no data key is available")
            if len(view) < SEALED_OVERHEAD:
                raise DataLoss(f"{what}: sealed object is truncated")
            try:
                return self._aead.decrypt(view[1 : 1 + NONCE_BYTES], view[1 + NONCE_BYTES :], aad)
            except InvalidTag:
                raise DataLoss(
                    f"{what} does not authenticate (damaged, or moved from another id or tenant)"
                ) from None
        if kind == FORMAT_PLAIN:
            return bytes(view[1:])
        if bare_ok:
            return bytes(view)
        raise DataLoss(f"{what}: unknown storage format 0x{kind:02x}")

    def open_chunk(self, chunk_id: bytes, stored: bytes | memoryview) -> bytes:
        """The chunk's zstd frame, as the hydrator uploaded it."""
        bare = bytes(stored[:4]) == _ZSTD_MAGIC
        return self.open(chunk_aad(chunk_id), stored, f"chunk {chunk_id.hex()[:16]}…", bare_ok=bare)

    def seal_manifest(self, manifest_id: str, data: bytes) -> bytes:
        return self.seal(manifest_aad(manifest_id), data)

    def open_manifest(self, manifest_id: str, stored: bytes) -> bytes:
        bare = bool(stored) and stored[0] == _BARE_MANIFEST
        return self.open(
            manifest_aad(manifest_id), stored, f"manifest {manifest_id[:16]}…", bare_ok=bare
        )
