"""Validation of caller-supplied identifiers and labels.

Every check raises :class:`InvalidArgument` with a message that names the
field and the problem, so a caller can fix the request without reading code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sessiond.client.errors import InvalidArgument

MAX_ID_BYTES = 128
MAX_LABELS = 64
MAX_LABEL_KEY_BYTES = 63
MAX_LABEL_VALUE_BYTES = 256
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?$")


def session_id(value: str, field: str = "session_id") -> str:
    """A sessiond session id: 1–128 bytes of ``[A-Za-z0-9._-]``, starting
    alphanumeric (so it is safe as a path component and in URLs)."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"{field} is longer than {MAX_ID_BYTES} bytes")
    if not _ID.match(value):
        raise InvalidArgument(
            f"{field} {value[:40]!r} may contain only letters, digits, '.', '_' and '-' "
            "and must start with a letter or digit"
        )
    return value


def labels(values: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidArgument(f"{field}: at most {MAX_LABELS} labels")
    for key, value in values.items():
        label_key(key, field)
        if len(value.encode()) > MAX_LABEL_VALUE_BYTES:
            raise InvalidArgument(
                f"{field}[{key!r}]: value longer than {MAX_LABEL_VALUE_BYTES} bytes"
            )
        if any(ord(c) < 0x20 for c in value):
            raise InvalidArgument(f"{field}[{key!r}]: value contains control characters")
    return dict(values)


def label_key(key: str, field: str = "labels") -> str:
    if not key or len(key.encode()) > MAX_LABEL_KEY_BYTES or not _LABEL_KEY.match(key):
        raise InvalidArgument(
            f"{field}: bad label key {key[:70]!r} (1-{MAX_LABEL_KEY_BYTES} chars of "
            "[a-z0-9._/-], starting and ending alphanumeric)"
        )
    return key


def page_size(value: int, default: int = 100, maximum: int = 1000) -> int:
    if value < 0:
        raise InvalidArgument("page_size must not be negative")
    if value == 0:
        return default
    return min(value, maximum)
