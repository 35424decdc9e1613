"""Dialect-independent pieces of session leases and fenced updates: argument
checks, the session state machine and the failure diagnosis shared by
:mod:`.postgres_sessions` and :mod:`.sqlite_sessions`, so the two backends
accept, refuse and explain exactly the same things.

State machine (``update_fenced``; a state may always be "changed" to itself,
so a retried call is harmless)::

    NEW        → HYDRATING
    HYDRATING  → ACTIVE | SUSPENDED | NEW    (a failed hydrate falls back)
    ACTIVE     → SUSPENDING                  (never re-hydrated over a live sandbox)
    SUSPENDING → SUSPENDED | ACTIVE          (a failed suspend keeps the sandbox)
    SUSPENDED  → HYDRATING

DELETED is reached only through ``mark_deleted`` and never left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sessiond.client.errors import Aborted, FailedPrecondition, InvalidArgument

from .metadata_common import MAX_PAGE_SIZE, check_id
from .records import SessionChanges, SessionState
from .workspace_common import MAX_INT64, lease_lost

#: Longest lease, and longest idle threshold, a caller may ask for (a year):
#: beyond that a value is a unit mistake, and it must fit both backends'
#: timestamp arithmetic.
MAX_LEASE_SECONDS = 365 * 86_400.0

_S = SessionState

#: Legal ``update_fenced`` transitions (the table in the module docstring).
SUCCESSORS: dict[SessionState, frozenset[SessionState]] = {
    # NEW → SUSPENDED: a fork or restore target that starts from a snapshot.
    _S.NEW: frozenset({_S.HYDRATING, _S.SUSPENDED}),
    _S.HYDRATING: frozenset({_S.ACTIVE, _S.SUSPENDED, _S.NEW}),
    # ACTIVE → SUSPENDED: the sandbox vanished (provider timeout, crash);
    # ACTIVE → HYDRATING: re-hydrate an active session that has no sandbox.
    _S.ACTIVE: frozenset({_S.SUSPENDING, _S.SUSPENDED, _S.HYDRATING}),
    _S.SUSPENDING: frozenset({_S.SUSPENDED, _S.ACTIVE}),
    _S.SUSPENDED: frozenset({_S.HYDRATING}),
    _S.DELETED: frozenset(),
}


def check_transition(session_id: str, current: SessionState, target: SessionState) -> None:
    """``FailedPrecondition`` naming both states unless ``current`` may move
    to ``target`` (staying put counts as legal, except in DELETED)."""
    if current == SessionState.DELETED or (target != current and target not in SUCCESSORS[current]):
        raise FailedPrecondition(
            f"session {session_id!r}: illegal state change {current.value} → {target.value}"
        )


def check_owner(owner: str) -> str:
    return check_id("lease owner", owner)


def check_seconds(what: str, value: float, *, allow_zero: bool) -> float:
    """A finite number of seconds in ``(0, MAX_LEASE_SECONDS]`` (``[0, …]``
    if ``allow_zero``); else ``InvalidArgument``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
        or value > MAX_LEASE_SECONDS
    ):
        low = "0 <=" if allow_zero else "0 <"
        raise InvalidArgument(f"{what} must be a number of seconds, {low} s <= 1 year: {value!r}")
    return float(value)


def to_micros(seconds: float) -> int:
    """Seconds as whole microseconds (the SQLite backend's clock unit)."""
    return round(seconds * 1_000_000)


def check_epoch(epoch: int) -> int:
    if type(epoch) is not int or not 0 <= epoch <= MAX_INT64:
        raise InvalidArgument(f"epoch must be an integer in [0, 2^63), got {epoch!r}")
    return epoch


def check_limit(limit: int) -> int:
    """At least 1; larger than a page of sessions is capped."""
    if type(limit) is not int or limit < 1:
        raise InvalidArgument(f"limit must be a positive integer, got {limit!r}")
    return min(limit, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class CheckedChanges:
    """A validated :class:`SessionChanges`. Text fields keep the caller's
    encoding (``None`` leave, ``""`` clear, else set): both backends apply
    them as ``CASE WHEN v IS NULL THEN col ELSE NULLIF(v, '') END``."""

    state: SessionState | None
    sandbox_id: str | None
    sandbox_cwd: str | None
    sdk_session_id: str | None
    project_key: str | None
    latest_snapshot_id: str | None
    add_turns: int
    touch: bool


def check_changes(changes: SessionChanges) -> CheckedChanges:
    """``InvalidArgument`` for a state that is not a :class:`SessionState`,
    text that is not ``str`` (or holds NUL), or ``add_turns`` that is not an
    integer in ``[0, 2^31)``. Moving to DELETED is not refused here but by
    :func:`check_transition` (``FailedPrecondition``, like any illegal move)."""
    if not isinstance(changes, SessionChanges):
        raise InvalidArgument(f"changes must be SessionChanges, got {type(changes).__name__}")
    state = changes.state
    if state is not None:
        try:
            state = SessionState(state)
        except ValueError as exc:
            raise InvalidArgument(f"unknown session state {state!r}") from exc
    turns = changes.add_turns
    if type(turns) is not int or not 0 <= turns < 2**31:
        raise InvalidArgument(f"add_turns must be an integer in [0, 2^31), got {turns!r}")
    if not isinstance(changes.touch, bool):
        raise InvalidArgument(f"touch must be a bool, got {changes.touch!r}")
    return CheckedChanges(
        state=state,
        sandbox_id=_check_text("sandbox_id", changes.sandbox_id),
        sandbox_cwd=_check_text("sandbox_cwd", changes.sandbox_cwd),
        sdk_session_id=_check_text("sdk_session_id", changes.sdk_session_id),
        project_key=_check_text("project_key", changes.project_key),
        latest_snapshot_id=_check_text("latest_snapshot_id", changes.latest_snapshot_id),
        add_turns=turns,
        touch=changes.touch,
    )


def _check_text(what: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string or None, got {type(value).__name__}")
    if "\0" in value:
        raise InvalidArgument(f"{what} must not contain NUL")
    return value


def refuse_fenced(
    session_id: str,
    state: SessionState,
    epoch: int,
    expected_epoch: int,
    target: SessionState | None,
) -> None:
    """Raise what ``update_fenced`` reports for a session found in ``state``
    at ``epoch``, checked in this order (the order of ``SnapshotTable.commit``):
    ``FailedPrecondition`` if deleted, ``Aborted`` unless the epoch is the
    caller's, ``FailedPrecondition`` for an illegal state change. Returns if
    the update may proceed."""
    if state == SessionState.DELETED:
        raise FailedPrecondition(f"session {session_id!r} is deleted")
    if epoch != expected_epoch:
        raise Aborted(lease_lost(session_id, epoch, expected_epoch))
    if target is not None:
        check_transition(session_id, state, target)


def renew_refused(session_id: str, owner: str, epoch: int) -> Aborted:
    return Aborted(
        f"lease lost: session {session_id!r} is no longer leased to {owner!r} at epoch {epoch}"
    )
