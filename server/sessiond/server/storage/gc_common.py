"""Dialect-independent pieces of the GC table (:class:`~.metadata.GcTable`):
argument checks shared by :mod:`.postgres_gc` and :mod:`.sqlite_gc`, so both
backends refuse exactly the same input and say the same thing when the GC
lease is lost.
"""

from __future__ import annotations

import math

from sessiond.client.errors import Aborted, InvalidArgument

from .metadata_common import check_id
from .records import DeletedSession, TranscriptKey

#: Longest job lease: a runner that needs more renews.
MAX_JOB_TTL = 86_400.0
#: Longest grace period GC accepts (a year): past it, nothing is collected.
MAX_GRACE = 366 * 86_400.0
#: Trees handed out / ids added per call, so one call stays one bounded statement.
MAX_BATCH = 10_000


def check_job(name: str, owner: str, ttl: float | None = None) -> None:
    check_id("job name", name)
    check_id("job owner", owner)
    if ttl is not None and (
        not isinstance(ttl, int | float) or not math.isfinite(ttl) or not 0 < ttl <= MAX_JOB_TTL
    ):
        raise InvalidArgument(f"job lease ttl must be in (0, {MAX_JOB_TTL:g}] seconds, got {ttl!r}")


def check_grace(grace: float) -> float:
    """``grace`` in seconds, as a float; ``InvalidArgument`` unless in [0, 1 year]."""
    finite = isinstance(grace, int | float) and math.isfinite(grace)
    if not finite or not 0 <= grace <= MAX_GRACE:
        raise InvalidArgument(f"grace must be in [0, {MAX_GRACE:g}] seconds, got {grace!r}")
    return float(grace)


def check_limit(limit: int) -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_BATCH:
        raise InvalidArgument(f"limit must be an integer in [1, {MAX_BATCH}], got {limit!r}")
    return limit


def check_setting(what: str, value: int | None) -> int | None:
    """A retention setting: None (no limit) or an integer >= 1."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 2**31 - 1:
        raise InvalidArgument(f"{what} must be a positive integer or unset, got {value!r}")
    return value


def lease_lost(owner: str) -> Aborted:
    return Aborted(f"GC lease lost: {owner!r} no longer holds the {'gc'!r} job lease")


def deleted_session(
    session_id: str, project_key: str | None, sdk_session_id: str | None, shared: bool
) -> DeletedSession:
    """The record for a deleted session; its transcript only when it has one
    and no live session of the tenant uses the same SDK session id."""
    transcript = None
    if project_key and sdk_session_id and not shared:
        transcript = TranscriptKey(project_key, sdk_session_id)
    return DeletedSession(session_id=session_id, transcript=transcript)
