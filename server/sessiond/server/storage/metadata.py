"""The MetadataStore protocol: sessions, tenants, transcripts (and, in later
layers, the chunk index, snapshots and leases) in one transactional database.

Implementations: :class:`~sessiond.server.storage.sqlite_meta.SqliteMetadataStore`
(the embedded default, one file) and
:class:`~sessiond.server.storage.postgres_meta.PostgresMetadataStore` (asyncpg,
versioned migrations, shared by every server replica). Both run the contract
suite in ``tests/contracts/test_metadata_store.py``.

Every row carries ``tenant_id`` and every method takes the tenant explicitly:
a row of another tenant is indistinguishable from a missing one (``NotFound``).
Timestamps come from the database clock, never from the caller.

Errors are translated at this edge: ``NotFound``, ``AlreadyExists``,
``FailedPrecondition``, ``InvalidArgument`` (e.g. a malformed page token) and
``Unavailable`` (the database cannot be reached or the connection dropped).
Driver exceptions never escape.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from .records import (
    ApiKeyRecord,
    AppendResult,
    ChunkLocation,
    DeletedSession,
    IdempotencyRecord,
    JobLease,
    ManifestRecord,
    NewSession,
    NewSnapshot,
    PackRecord,
    PackUsage,
    Page,
    ReachStats,
    Retention,
    SessionChanges,
    SessionRecord,
    SnapshotRecord,
    Tenant,
    TranscriptEntry,
    TranscriptKey,
    TranscriptSession,
    TranscriptSummary,
    Usage,
)

DEFAULT_TENANT = "default"


class TenantTable(Protocol):
    async def create(self, tenant_id: str, name: str) -> Tenant:
        """Create a tenant with a fresh random chunk key. ``AlreadyExists`` if
        the id is taken."""
        ...

    async def ensure(self, tenant_id: str, name: str) -> Tenant:
        """Return the tenant, creating it if absent (race-free: concurrent
        callers get the same row and the same chunk key). An existing tenant
        is returned unchanged (``name`` is not updated). ``FailedPrecondition``
        if the tenant is shredded but not yet purged (finish its deletion
        first)."""
        ...

    async def get(self, tenant_id: str) -> Tenant:
        """``NotFound`` if absent or deleted (shredded)."""
        ...

    async def data_key(self, tenant_id: str) -> tuple[bytes | None, str | None]:
        """The tenant's wrapped data key and the id of the master key that
        wrapped it; ``(None, None)`` if it has none yet. ``NotFound`` if the
        tenant is absent or deleted."""
        ...

    async def set_data_key_if_absent(
        self, tenant_id: str, wrapped: bytes, master_id: str
    ) -> tuple[bytes, str]:
        """Store a wrapped data key unless the tenant already has one, and
        return the one it has now — race-free: of concurrent callers (other
        replicas included) the first to store wins, and all of them get the
        winner's key. ``NotFound`` if the tenant is absent or deleted (a
        shredded tenant never gets a new key); ``InvalidArgument`` for an
        empty key or master id."""
        ...

    async def shred(self, tenant_id: str) -> None:
        """Crypto-shred the tenant: destroy its wrapped data key (whatever
        sealed objects remain can no longer be read by anyone), replace its
        chunk key, and stamp ``deleted_at`` — from then on the tenant is gone
        to :meth:`get`, :meth:`data_key` and authentication, while its rows
        wait for :meth:`purge`. Idempotent (the first ``deleted_at`` stays).
        ``NotFound`` if absent."""
        ...

    async def purge(self, tenant_id: str) -> None:
        """Delete every row of a shredded tenant — sessions, transcripts,
        chunk index, packs, manifests, snapshots, API keys, usage,
        idempotency keys — and then the tenant row, in one transaction.
        Call only after its blob objects are deleted (rows are the index to
        them). ``FailedPrecondition`` if the tenant is not shredded; a no-op
        if it is absent (so a finished deletion can be repeated)."""
        ...

    async def add_api_key(
        self, tenant_id: str, key_id: str, secret_hash: bytes, expires_at: datetime | None
    ) -> ApiKeyRecord:
        """Record an API key of the tenant. ``NotFound`` if the tenant does not
        exist; ``AlreadyExists`` if the key id is taken."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The key, revoked and expired ones included. ``NotFound`` if absent."""
        ...

    async def list_api_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        """The tenant's keys, oldest first."""
        ...

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord:
        """Stamp ``revoked_at`` (idempotent: the first stamp stays). ``NotFound``
        if the tenant has no such key."""
        ...


class SessionTable(Protocol):
    async def create(self, new: NewSession) -> SessionRecord:
        """Insert a session in state NEW with epoch 0. ``AlreadyExists`` if the
        (tenant, session id) pair is taken, deleted sessions included;
        ``NotFound`` if the tenant does not exist; ``InvalidArgument`` for an
        empty id or labels that are not non-empty strings → strings (no NUL)."""
        ...

    async def get(self, tenant_id: str, session_id: str) -> SessionRecord:
        """The session, deleted ones included. ``NotFound`` if absent."""
        ...

    async def list(
        self,
        tenant_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        include_deleted: bool = False,
    ) -> Page[SessionRecord]:
        """Sessions newest first (created_at, then session_id, descending) that
        carry every label in ``labels`` (empty or None: no filter). Paging is
        stable under concurrent inserts (keyset, not offset): a session that
        existed when paging began appears exactly once. ``next_token`` is
        empty on the last page. A token is bound to the tenant and filters
        that produced it. ``InvalidArgument`` for a malformed or foreign
        token, or ``page_size`` < 1; sizes above 1000 are capped."""
        ...

    async def update(
        self,
        tenant_id: str,
        session_id: str,
        *,
        set_labels: Mapping[str, str] | None = None,
        remove_labels: Sequence[str] = (),
        agent_options: dict[str, Any] | None = None,
        snapshot_policy: dict[str, Any] | None = None,
    ) -> SessionRecord:
        """Apply the changes atomically and bump ``updated_at``: labels in
        ``set_labels`` are added or overwritten, keys in ``remove_labels``
        removed (absent keys ignored); ``agent_options`` / ``snapshot_policy``
        replace the stored object when not None. ``NotFound``;
        ``FailedPrecondition`` if the session is deleted; ``InvalidArgument``
        if a key is both set and removed."""
        ...

    async def bump_epoch(self, tenant_id: str, session_id: str) -> SessionRecord:
        """Take the session over: increment its fencing epoch (every earlier
        holder is now fenced), bump ``updated_at`` and return the new record.
        Serialized with :meth:`SnapshotTable.commit` on the session row: a
        commit either landed before the bump or is refused after it.
        ``NotFound``; ``FailedPrecondition`` if deleted."""
        ...

    async def acquire_lease(
        self, tenant_id: str, session_id: str, owner: str, ttl: float
    ) -> SessionRecord | None:
        """Lease the session to ``owner`` for ``ttl`` seconds of database time
        if the lease is free (never taken, released, or expired:
        ``lease_expires_at <= now``) or already ``owner``'s — one atomic
        step: of concurrent callers for a free lease exactly one wins.

        When the owner changes the epoch is incremented (fencing every
        earlier holder) and ``updated_at`` bumped; a released lease has no
        owner, so taking it — even back — bumps too. ``owner`` re-acquiring
        its own lease, live or expired but untaken, just moves the expiry
        to ``now + ttl`` and keeps the epoch. Returns the record — its
        ``epoch`` is what the holder presents to fenced calls — or None if
        another owner holds a live lease. ``NotFound``;
        ``FailedPrecondition`` if deleted; ``InvalidArgument`` for an empty
        owner or a ``ttl`` that is not in (0 s, 1 year]."""
        ...

    async def renew_lease(
        self, tenant_id: str, session_id: str, owner: str, epoch: int, ttl: float
    ) -> None:
        """Set the lease's expiry to ``now + ttl`` (database clock; a shorter
        ``ttl`` than before shortens it). Succeeds as long as ``owner`` and
        ``epoch`` still hold the lease — including one that expired but that
        nobody took, which is thereby revived (no one else can have written
        under a newer epoch). ``Aborted`` if they no longer hold it (taken
        over, released, the epoch bumped, or the session deleted);
        ``NotFound`` if the session does not exist. ``updated_at`` is not
        touched."""
        ...

    async def release_lease(self, tenant_id: str, session_id: str, owner: str, epoch: int) -> None:
        """Give the lease up if ``owner`` and ``epoch`` hold it: the owner is
        cleared and ``lease_expires_at`` becomes the time it ended (now, or
        its earlier expiry). A no-op if not held, or if the session does not
        exist, so it is safe to repeat."""
        ...

    async def update_fenced(
        self, tenant_id: str, session_id: str, epoch: int, changes: SessionChanges
    ) -> SessionRecord:
        """Apply ``changes`` atomically if the session's epoch is still
        ``epoch``, and bump ``updated_at``. The epoch is the fence: a live
        lease is not required. Checked in this order, nothing written unless
        all pass (the order of :meth:`SnapshotTable.commit`):

        1. ``NotFound`` if the session does not exist;
        2. ``FailedPrecondition`` if it is deleted;
        3. ``Aborted`` unless its epoch equals ``epoch``;
        4. ``FailedPrecondition`` naming both states if ``changes.state`` is
           not a legal move (``session_common``): NEW→HYDRATING,
           HYDRATING→ACTIVE|SUSPENDED|NEW (a failed hydrate falls back),
           ACTIVE→SUSPENDING, SUSPENDING→SUSPENDED|ACTIVE (a failed suspend
           keeps the sandbox), SUSPENDED→HYDRATING, or staying put. DELETED
           is reached only through :meth:`mark_deleted`.

        Text fields: None leaves, ``""`` clears (NULL), anything else sets
        (not checked against other tables); ``add_turns`` is added to
        ``turn_count``; ``touch`` sets ``last_active_at`` to the database
        clock. ``InvalidArgument`` for text holding NUL, an unknown state,
        or ``add_turns`` outside [0, 2^31)."""
        ...

    async def claim_idle(
        self, owner: str, idle_seconds: float, ttl: float, limit: int
    ) -> builtins.list[SessionRecord]:
        """Across all tenants: lease to ``owner`` for ``ttl`` seconds up to
        ``limit`` (capped at 1000) ACTIVE sessions whose ``last_active_at``
        is older than ``idle_seconds`` (database clock) and whose lease is
        free or expired, least recently active first, skipping rows another
        replica is claiming at the same moment (``FOR UPDATE SKIP LOCKED``):
        concurrent claimers never get the same session. Epochs and
        ``updated_at`` are bumped as in :meth:`acquire_lease`. Returns the
        claimed records, least recently active first. ``InvalidArgument``
        for an empty owner, ``idle_seconds`` outside [0, 1 year], ``ttl`` as
        in :meth:`acquire_lease`, or ``limit`` < 1."""
        ...

    async def list_leased_by(self, owner: str) -> builtins.list[SessionRecord]:
        """Sessions whose live lease ``owner`` holds (for shutdown), across
        tenants, ordered by tenant then session id. Deleted sessions hold no
        lease."""
        ...

    async def mark_deleted(self, tenant_id: str, session_id: str) -> SessionRecord:
        """Move the session to DELETED, bump its epoch so any holder of a
        lease on it is fenced, and end that lease. Idempotent: on an already deleted session it
        changes nothing (the epoch was bumped by the first call) and returns
        the record. ``NotFound`` if absent."""
        ...


class TranscriptTable(Protocol):
    """Storage behind the SDK ``SessionStore`` protocol, per tenant."""

    async def append(
        self, tenant_id: str, key: TranscriptKey, entries: Sequence[TranscriptEntry]
    ) -> AppendResult:
        """Append a batch in one transaction, after any earlier append to the
        same key (per-key order is commit order).

        Idempotent on ``uuid``: an entry whose uuid is already stored under the
        key — or repeated earlier in the same batch — is skipped and counted in
        ``duplicates``. Entries without uuid are always appended. For a main key
        (empty subpath) the session's summary is folded with the SDK's
        ``fold_session_summary`` over the newly appended entries inside the same
        transaction, serialized per session, and stamped with the same storage
        mtime that :meth:`list_sessions` reports. An empty batch is a no-op.

        ``mtime_ms`` is the storage clock in epoch milliseconds, strictly
        increasing per key. A batch in which every entry is a duplicate (the
        SDK's retry of a batch that did commit) changes nothing at all and
        reports ``mtime_ms=0``. ``NotFound`` if the tenant does not exist.
        """
        ...

    def load(
        self, tenant_id: str, key: TranscriptKey, *, page_size: int = 500
    ) -> AsyncIterator[list[str]]:
        """Stream the key's entries (JSON text) in append order, in pages of at
        most ``page_size``; memory is bounded by one page and no transaction
        is held between pages (entries appended meanwhile may appear in later
        pages, in order). Raises ``NotFound`` on first iteration if the key
        holds no entry; ``InvalidArgument`` if ``page_size`` < 1."""
        ...

    async def list_sessions(self, tenant_id: str, project_key: str) -> list[TranscriptSession]:
        """Main transcripts (empty subpath) of the project, any order."""
        ...

    async def list_summaries(self, tenant_id: str, project_key: str) -> list[TranscriptSummary]: ...

    async def delete(self, tenant_id: str, key: TranscriptKey) -> None:
        """Delete one key; an empty subpath cascades to every subpath of the
        session and to its summary. Idempotent."""
        ...

    async def list_subkeys(self, tenant_id: str, project_key: str, session_id: str) -> list[str]:
        """Subpaths holding entries under the session, sorted by code point."""
        ...

    async def move_session(
        self, tenant_id: str, session_id: str, from_project: str, to_project: str
    ) -> None:
        """Re-key every transcript of the session (main, subpaths, summary)
        from one project key to another in one transaction — what a session
        needs when it resumes in a different cwd (the SDK loads under the
        key of the current cwd). Entries keep their seqs, uuids (idempotency
        carries over) and mtimes; only the keys and the summary change.
        An append in flight to one of the session's keys commits first and
        moves along; a later one (or the first append of a new subpath)
        lands under ``from_project``, as addressed — move before resuming.
        A no-op if the keys are equal or nothing is stored under
        ``from_project``; ``AlreadyExists`` (nothing moved) if ``to_project``
        already holds any key (main or subpath) of this session;
        ``InvalidArgument`` for an empty session id or project key."""
        ...

    async def position(self, tenant_id: str, key: TranscriptKey, uuid: str) -> int:
        """The seq of the entry with this uuid under this key: seqs grow in
        append order (not necessarily by 1) and survive :meth:`move_session`.
        ``NotFound`` if absent; ``InvalidArgument`` for an empty uuid."""
        ...

    async def last_position(self, tenant_id: str, key: TranscriptKey) -> tuple[str | None, int]:
        """(uuid of the last entry that has one, seq of the last entry);
        ``(None, 0)`` for an empty/absent key."""
        ...


class ChunkIndex(Protocol):
    """Where each chunk of a tenant lives. Chunk ids are keyed per tenant, so
    the same id under two tenants is two unrelated rows.

    Every id (chunk or tree) is 32 bytes; any other length or type (a hex
    ``str``, say) is ``InvalidArgument`` in every method, as are more than
    100,000 ids in one call. Rows carry
    ``created_at`` from the database clock, for GC's grace period."""

    async def missing(self, tenant_id: str, chunk_ids: Sequence[bytes]) -> list[bytes]:
        """The ids (in input order, deduplicated) that are not indexed, or
        are indexed but marked by GC (so a snapshot that needs a marked chunk
        uploads it again, which un-marks it). An unknown tenant has nothing
        indexed."""
        ...

    async def add_pack(
        self, tenant_id: str, pack: PackRecord, chunks: Sequence[ChunkLocation]
    ) -> int:
        """Record a stored pack and index its chunks in one transaction. A chunk
        already indexed keeps its first location (the duplicate bytes in this
        pack are garbage for GC), as does an id listed twice in ``chunks``
        (the first entry wins) — except a chunk GC has marked: its row moves
        to this pack, its mark is cleared and its ``created_at`` restamped
        (a fresh grace period), in the same transaction. Returns how many
        chunks were newly indexed or moved. Write order: call only after the
        pack object is durably stored.

        Idempotent: repeating a call (same pack id, blob key and size) adds
        nothing and returns 0 for the chunks it already indexed. The same
        pack id with another blob key or size is ``AlreadyExists``.
        ``InvalidArgument`` (nothing written) unless every location names
        this pack (``pack_id`` and ``blob_key``), lies inside it (``offset +
        length <= size``, ``length > 0``), has kind ``data`` or ``tree`` and
        is ``verified`` only if a tree. ``NotFound`` if the tenant does not
        exist."""
        ...

    async def lookup(
        self, tenant_id: str, chunk_ids: Sequence[bytes]
    ) -> dict[bytes, ChunkLocation]:
        """Locations of the indexed ids; missing ids are absent from the dict
        (duplicates in the input are looked up once). Chunks marked by GC are
        included with ``marked`` set: they are still readable, but whoever
        builds a new manifest on them must treat them as missing."""
        ...

    async def mark_verified(self, tenant_id: str, tree_ids: Sequence[bytes]) -> None:
        """Mark trees whose whole subtree has been checked as stored.
        Idempotent; ids that are not indexed, or index a data chunk, are
        ignored (the flag only ever means "this tree's subtree is stored").

        A no-op while any chunk of the tenant is marked by GC, and serialized
        with :meth:`GcReach.mark` (which clears every flag of the tenant): a
        walk that read a chunk just before GC marked it must not leave a
        flag behind that lets a later manifest skip over the marked chunk."""
        ...


class SnapshotTable(Protocol):
    async def put_manifest(self, tenant_id: str, manifest: ManifestRecord) -> ManifestRecord:
        """Record a stored manifest blob (idempotent on manifest_id: returns
        the existing row unchanged). Call only after the blob is durably
        stored. ``manifest.created_at`` is ignored: the row is stamped with
        the database clock. ``NotFound`` if the tenant does not exist;
        ``InvalidArgument`` unless the root tree id is 32 bytes and the
        config tree id empty or 32 bytes."""
        ...

    async def get_manifest(self, tenant_id: str, manifest_id: str) -> ManifestRecord:
        """``NotFound`` if absent."""
        ...

    async def commit(self, new: NewSnapshot, expected_epoch: int) -> SnapshotRecord:
        """Make a snapshot visible — the commit point of the write order.

        In one transaction, checked in this order (nothing is written unless
        every check passes):

        1. lock the session row; ``NotFound`` if the session does not exist;
        2. if ``idempotency_key`` was already used for this session, the
           snapshot it created is returned unchanged and nothing is written —
           even if the epoch has moved on or the session was deleted since
           (a retry whose first attempt landed gets its answer back);
        3. ``FailedPrecondition`` if the session is deleted;
        4. ``Aborted`` unless its epoch equals ``expected_epoch`` (a newer
           holder took over);
        5. ``NotFound`` if the manifest does not exist for this tenant;
        6. ``AlreadyExists`` if ``snapshot_id`` is taken in the tenant.

        Otherwise the snapshot is inserted with ``created_at`` from the
        database clock, strictly later than the session's previous snapshot
        (so the newest by ``created_at`` is always the latest), and becomes
        the session's ``latest_snapshot_id`` (``updated_at`` bumped).
        Empty ``parent_snapshot_id`` / ``transcript_uuid`` /
        ``idempotency_key`` mean None (proto3's absent). ``InvalidArgument``
        for empty ids or trigger, a negative ``transcript_seq`` or stats that
        are not a JSON object (NaN and NUL included). The parent is lineage
        only: it is not checked.
        """
        ...

    async def get(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        """``NotFound`` if absent."""
        ...

    async def list(
        self, tenant_id: str, session_id: str, *, page_size: int = 100, page_token: str = ""
    ) -> Page[SnapshotRecord]:
        """The session's snapshots, newest first (``created_at``, then
        ``snapshot_id``, descending), deleted sessions included. Keyset
        paging as :meth:`SessionTable.list`: stable under concurrent commits,
        ``next_token`` empty on the last page, a token bound to the tenant
        and session that produced it. ``NotFound`` if the session does not
        exist; ``InvalidArgument`` for a malformed or foreign token or
        ``page_size`` < 1 (above 1000 capped)."""
        ...

    async def covering(
        self, tenant_id: str, session_id: str, transcript_seq: int
    ) -> SnapshotRecord:
        """The snapshot that covers the message at ``transcript_seq``: the
        first one taken at or after it — the smallest ``transcript_seq`` that
        is at least the given one, the newest of those if several share it.
        With a snapshot after every turn that is the workspace as the turn
        holding the message left it. ``NotFound`` if none (or no such
        session); ``InvalidArgument`` if negative."""
        ...


class IdempotencyTable(Protocol):
    """Idempotency keys of mutating RPCs, scoped by (tenant, method, key).

    The table only records; the policy (what "the same request" means, how
    long a caller waits for a call in flight) is :mod:`..core.idempotency`'s.
    Every duration is in seconds of the database clock. ``InvalidArgument``
    for an empty tenant, method or key, an empty request hash, or a duration
    that is negative or over a year (zero only for :meth:`expire`).
    """

    async def claim(
        self,
        tenant_id: str,
        method: str,
        key: str,
        request_hash: bytes,
        *,
        stale_after: float,
        ttl: float,
    ) -> IdempotencyRecord | None:
        """Claim ``key`` for a first execution, atomically. Returns None when
        the caller now holds the claim — the key was unused, its row is older
        than ``ttl`` (expired: as good as absent), or its row is an
        unfinished claim older than ``stale_after`` (its holder is presumed
        dead) — and the row then carries ``request_hash``, no response and
        ``created_at = now``; the caller must :meth:`complete` or
        :meth:`release` it. Otherwise the existing row is returned unchanged,
        finished (``response`` set) or still running (``response`` None),
        whatever its request hash. Of concurrent claimers of one key exactly
        one gets None. ``NotFound`` if the tenant does not exist."""
        ...

    async def complete(
        self, tenant_id: str, method: str, key: str, request_hash: bytes, response: bytes
    ) -> None:
        """Record the response of a claim. Only an unfinished row carrying
        ``request_hash`` changes: a stored response is never replaced, and a
        row that is gone or was re-claimed with another request is left
        alone (a no-op)."""
        ...

    async def release(self, tenant_id: str, method: str, key: str, request_hash: bytes) -> None:
        """Drop an unfinished claim carrying ``request_hash`` (its execution
        failed, so a retry may execute afresh). Finished rows and rows of
        another request are left alone; an absent row is a no-op."""
        ...

    async def expire(self, older_than: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` rows of any tenant created more than
        ``older_than`` seconds ago, finished or not, oldest first; return how
        many went (GC calls this until it returns less than ``limit``).
        ``InvalidArgument`` if ``limit`` < 1."""
        ...


GC_JOB = "gc"

#: Deletes blob objects by key; returns the keys it deleted (a key whose
#: deletion failed is left out, so its row is kept).
BlobDeleter = Callable[[Sequence[str]], Awaitable[Sequence[str]]]


class GcReach(Protocol):
    """A set of chunk ids reachable from roots, held by the database (a
    temporary table), so the live set of a tenant never sits in server
    memory. Obtained from :meth:`GcTable.reach`; bound to one tenant and one
    connection. The caller walks trees: :meth:`next_trees` hands out trees
    to read, :meth:`add` records what they reference.

    Destructive methods take the GC lease owner and raise ``Aborted``
    (nothing written) unless that owner holds a live ``gc`` job lease, checked
    in the same transaction; with ``dry_run`` they only count."""

    async def add_roots(self, *, committed_only: bool) -> int:
        """Add the root and config trees of every manifest row (with
        ``committed_only``, of manifests some snapshot references). Returns
        how many distinct trees were added."""
        ...

    async def add(self, ids: Sequence[tuple[bytes, bool]], parent: bytes | None = None) -> None:
        """Add (id, is_tree) pairs; ids already present are ignored. With
        edges recorded (:meth:`GcTable.reach`), ``parent`` names the tree
        that references them."""
        ...

    async def next_trees(self, limit: int) -> list[bytes]:
        """Up to ``limit`` trees not handed out before (each tree once);
        empty when the walk is complete."""
        ...

    async def unindexed(self, after: bytes, limit: int) -> list[tuple[bytes, bool]]:
        """Reachable (id, is_tree) pairs with no chunk row, ids above
        ``after`` in byte order, at most ``limit``."""
        ...

    async def packs(self, after: str, limit: int) -> list[PackUsage]:
        """The packs reachable chunks live in, pack ids above ``after`` in
        order, at most ``limit``."""
        ...

    async def locations(self, pack_id: str, *, data_only: bool) -> list[ChunkLocation]:
        """The reachable chunks stored in one pack (with ``data_only``, data
        chunks only), by offset: the order that reads the pack sequentially."""
        ...

    async def snapshots_reaching(self, ids: Sequence[bytes]) -> dict[bytes, list[str]]:
        """For each id, the snapshots whose manifest reaches it (needs edges);
        ids no snapshot reaches are absent."""
        ...

    async def stats(self) -> ReachStats: ...

    async def sweep(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        """Delete chunk rows marked more than ``grace`` seconds ago (database
        clock) that are not reachable. A chunk re-uploaded meanwhile was
        un-marked by ``add_pack`` and stays. Returns how many."""
        ...

    async def unmark(self, owner: str, *, dry_run: bool = False) -> int:
        """Clear the mark of reachable chunks (a manifest that reached them
        was accepted while they were marked). Returns how many."""
        ...

    async def mark(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        """Mark unmarked, unreachable chunks created more than ``grace``
        seconds ago with the database clock, and — when any was marked —
        clear ``verified`` on every tree of the tenant, in one transaction
        serialized with :meth:`ChunkIndex.mark_verified`. Returns how many."""
        ...


class GcTable(Protocol):
    """What garbage collection, retention and ``check`` need beyond the
    other tables. Every timestamp is the database clock."""

    async def acquire_job(self, name: str, owner: str, ttl: float) -> JobLease:
        """Take the job lease if it is free, expired, or already ``owner``'s
        (then its expiry moves to ``now + ttl``). Returns the lease as it
        stands: taken iff its owner is ``owner``. ``InvalidArgument`` for an
        empty name/owner or ``ttl`` outside (0, 1 day]."""
        ...

    async def renew_job(self, name: str, owner: str, ttl: float) -> JobLease:
        """Move the expiry to ``now + ttl`` while ``owner`` holds the lease
        (an expired lease nobody took is revived). ``Aborted`` otherwise."""
        ...

    async def release_job(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it; a no-op otherwise."""
        ...

    async def retention(self) -> list[Retention]:
        """Every tenant not deleted (shredded), with its retention settings,
        by tenant id."""
        ...

    async def set_retention(
        self, tenant_id: str, keep_last_snapshots: int | None, expire_suspended_days: int | None
    ) -> Retention:
        """Replace both settings (None: no limit). ``NotFound``;
        ``InvalidArgument`` for a value < 1."""
        ...

    async def expire_suspended(
        self, tenant_id: str, days: int, owner: str, *, dry_run: bool = False
    ) -> list[str]:
        """Move sessions SUSPENDED and not updated for ``days`` days, with no
        live lease, to DELETED as :meth:`SessionTable.mark_deleted` does
        (epoch bumped). Returns their ids."""
        ...

    async def prune_snapshots(
        self, tenant_id: str, keep_last: int, owner: str, *, dry_run: bool = False
    ) -> int:
        """Delete every snapshot row of each live session except its newest
        ``keep_last`` and its ``latest_snapshot_id``. Returns how many."""
        ...

    async def deleted_sessions(self, tenant_id: str, limit: int) -> list[DeletedSession]:
        """Deleted sessions that still hold snapshot rows or a transcript
        pointer (SDK session id), at most ``limit``."""
        ...

    async def purge_session(self, tenant_id: str, session_id: str, owner: str) -> int:
        """For a DELETED session: delete its snapshot rows and clear its
        latest snapshot, SDK session id and project key (the row stays as a
        tombstone, so the id is never reused). Delete its transcript first:
        once purged, it is no longer listed. Returns snapshot rows deleted.
        ``FailedPrecondition`` if the session is not deleted."""
        ...

    async def delete_manifests(
        self,
        tenant_id: str,
        grace: float,
        owner: str,
        delete_blobs: BlobDeleter,
        *,
        limit: int = 100,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete up to ``limit`` manifests that no snapshot references and
        that are older than ``grace`` seconds: rows locked (a commit that
        references one waits and then fails ``NotFound``), objects deleted
        with ``delete_blobs``, then the rows of the deleted objects, before
        the locks go. Returns the manifest ids deleted (dry run: that would
        be)."""
        ...

    async def delete_empty_packs(
        self,
        tenant_id: str,
        owner: str,
        delete_blobs: BlobDeleter,
        *,
        limit: int = 100,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete up to ``limit`` packs no chunk row names, the same way:
        rows locked and re-checked (an ``add_pack`` indexing into one waits
        and then fails), objects deleted, then rows. Returns pack ids."""
        ...

    async def snapshot_manifests(
        self, tenant_id: str, after: str, limit: int
    ) -> list[tuple[str, ManifestRecord | None]]:
        """Distinct manifest ids that snapshots reference, above ``after``,
        with their row (None if the row is missing)."""
        ...

    async def known_packs(self, tenant_id: str, pack_ids: Sequence[str]) -> set[str]:
        """The given pack ids that have a row."""
        ...

    async def known_manifests(self, tenant_id: str, manifest_ids: Sequence[str]) -> set[str]:
        """The given manifest ids that have a row."""
        ...

    def reach(self, tenant_id: str, *, edges: bool = False) -> AbstractAsyncContextManager[GcReach]:
        """A fresh, empty reachable set for the tenant (dropped on exit).
        ``edges`` also records which tree references which id, for
        :meth:`GcReach.snapshots_reaching`."""
        ...


class QuotaTable(Protocol):
    """Per-tenant quotas. Stored bytes are the sizes of the tenant's pack and
    manifest objects (so GC frees quota simply by deleting them); uploads
    reserve their size before sending a byte, so concurrent uploads cannot
    overshoot the quota together."""

    async def set_quota(
        self, tenant_id: str, *, quota_bytes: int | None, quota_sessions: int | None
    ) -> None:
        """Set (None: remove) the tenant's quotas. ``NotFound``."""
        ...

    async def usage(self, tenant_id: str) -> Usage:
        """``NotFound`` for an unknown tenant."""
        ...

    async def reserve_bytes(self, tenant_id: str, nbytes: int) -> None:
        """Reserve ``nbytes`` for an upload, atomically against the quota:
        ``ResourceExhausted`` (nothing reserved) when stored + reserved +
        ``nbytes`` would exceed it."""
        ...

    async def release_bytes(self, tenant_id: str, nbytes: int) -> None:
        """Give back a reservation (the upload finished — its objects now
        count as stored — or failed). Never goes below zero."""
        ...

    async def live_sessions(self, tenant_id: str) -> int: ...


class MetadataStore(Protocol):
    tenants: TenantTable
    sessions: SessionTable
    transcripts: TranscriptTable
    chunks: ChunkIndex
    snapshots: SnapshotTable
    gc: GcTable
    idempotency: IdempotencyTable
    quotas: QuotaTable

    async def now(self) -> datetime:
        """The database clock (timezone-aware UTC)."""
        ...

    async def server_key(self, name: str) -> bytes:
        """A secret shared by every replica (at least 32 random bytes), created
        on first use; concurrent first callers all get the same key."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless a trivial query succeeds."""
        ...

    async def close(self) -> None:
        """Release the pool/connection. Idempotent."""
        ...
