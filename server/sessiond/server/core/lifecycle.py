"""The session lifecycle: hydrate a sandbox, run turns in it, snapshot it,
suspend it, fork and rewind sessions. No grpc here.

State machine (in the metadata store, every change fenced by the lease epoch)::

    NEW ──► HYDRATING ──► ACTIVE ──► SUSPENDING ──► SUSPENDED ──► HYDRATING …
               │ (fails)               │ (fails)
               └──► back               └──► ACTIVE (sandbox kept)

Work inside the sandbox is done by the hydrator (``restore``, ``run``,
``snapshot``) executed through the SandboxProvider; it talks back to this
server with a scoped sandbox token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from claude_agent_sdk import project_key_for_directory

from sessiond.client.errors import (
    FailedPrecondition,
    NotFound,
    SessiondError,
    Unavailable,
)

from .. import sandbox_tokens
from ..sandboxes.provider import SandboxInfo, SandboxProvider, SandboxSpec
from ..storage.metadata import MetadataStore
from ..storage.records import SessionChanges, SessionRecord, SessionState, TranscriptKey
from .leases import Lease, LeaseManager
from .sandbox_env import DEFAULT_ALLOWLIST, allowlisted
from .turns import TurnEvent, TurnRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    # How sandboxes reach the server (a gRPC target; may list every replica:
    # "ipv4:127.0.0.1:5001,127.0.0.1:5002").
    server_address: str
    # Command that runs the hydrator inside a sandbox.
    hydrator_command: tuple[str, ...] = ("sessiond-hydrator",)
    env_allowlist: tuple[str, ...] = DEFAULT_ALLOWLIST
    # Seconds a sandbox token stays valid (one is issued per command).
    token_ttl: float = 6 * 3600
    sandbox_image: str = ""
    server_env: Mapping[str, str] = field(default_factory=dict)


class LifecycleObserver(Protocol):
    def observe(self, operation: str, trigger: str, seconds: float, ok: bool) -> None:
        """``operation`` ("hydrate" or "snapshot", with its trigger) took
        ``seconds`` and succeeded or not. Must not raise or block."""
        ...


class Lifecycle:
    def __init__(
        self,
        meta: MetadataStore,
        provider: SandboxProvider,
        leases: LeaseManager,
        token_key: bytes,
        config: LifecycleConfig,
    ) -> None:
        self._meta = meta
        self._provider = provider
        self._leases = leases
        self.leases = leases
        self._token_key = token_key
        self.config = config
        # Timings of hydrates and snapshots (metrics); set by the server.
        self.observer: LifecycleObserver | None = None

    def _observe(self, operation: str, trigger: str, started: float, ok: bool) -> None:
        if self.observer is not None:
            self.observer.observe(operation, trigger, time.monotonic() - started, ok)

    def configure(self, *, token_key: bytes, server_address: str) -> None:
        """Set what is only known once the server is bound and the database
        read: the sandbox-token key and the address sandboxes dial."""
        self._token_key = token_key
        self.config = dataclasses.replace(self.config, server_address=server_address)

    # -- helpers -------------------------------------------------------------

    async def _live(self, tenant_id: str, session_id: str) -> SessionRecord:
        record = await self._meta.sessions.get(tenant_id, session_id)
        if record.state is SessionState.DELETED:
            raise FailedPrecondition(f"session {session_id} is deleted")
        return record

    def _token(self, record: SessionRecord) -> str:
        return sandbox_tokens.issue(
            self._token_key,
            sandbox_tokens.SandboxClaims(
                tenant_id=record.tenant_id,
                session_id=record.session_id,
                sdk_session_id=record.sdk_session_id or "",
                expires_at=time.time() + self.config.token_ttl,
            ),
        )

    def _call_env(self, record: SessionRecord, info: SandboxInfo | None = None) -> dict[str, str]:
        return {
            "SESSIOND_SERVER": (info.server_address if info and info.server_address else "")
            or self.config.server_address,
            "SESSIOND_TOKEN": self._token(record),
            "SESSIOND_SESSION": record.session_id,
        }

    async def _hydrator(
        self, lease: Lease, args: Sequence[str], *, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        record = lease.record
        assert record.sandbox_id
        execution = await self._provider.exec(
            record.sandbox_id,
            [*self.config.hydrator_command, *args],
            env=self._call_env(record),
            stdin=stdin,
        )
        out, err = bytearray(), bytearray()
        async for event in execution.events():
            (out if event.stream == "stdout" else err).extend(event.data)
        return await execution.wait(), bytes(out), bytes(err)

    # -- hydrate ---------------------------------------------------------------

    async def ensure_sandbox(
        self,
        lease: Lease,
        on_created: Callable[[SandboxInfo], Awaitable[None]] | None = None,
    ) -> SessionRecord:
        """Make sure the session has a live sandbox holding its latest state."""
        record = lease.record
        if record.state is SessionState.ACTIVE and record.sandbox_id:
            try:
                await self._provider.describe(record.sandbox_id)
                if lease.previous_owner is not None:
                    # Another replica held this session and may have left a
                    # turn running in the sandbox: stop it before ours starts.
                    await self._provider.kill_all(record.sandbox_id)
                return record
            except NotFound:
                log.warning("sandbox of session %s is gone; hydrating", record.session_id)
                record = await lease.update(
                    SessionChanges(state=SessionState.SUSPENDED, sandbox_id="", sandbox_cwd="")
                )
        if record.state is SessionState.SUSPENDING:
            record = await lease.update(SessionChanges(state=SessionState.ACTIVE))
            return await self.ensure_sandbox(lease, on_created)
        if record.state is SessionState.HYDRATING:
            # A replica died mid-hydration: start over from the snapshot.
            if record.sandbox_id:
                await self._destroy_quietly(record.sandbox_id)
            fallback = SessionState.SUSPENDED if record.latest_snapshot_id else SessionState.NEW
            record = await lease.update(
                SessionChanges(state=fallback, sandbox_id="", sandbox_cwd="")
            )
        started, ok = time.monotonic(), False
        try:
            record = await self._hydrate(lease, on_created)
            ok = True
            return record
        finally:
            self._observe("hydrate", "", started, ok)

    async def _hydrate(
        self,
        lease: Lease,
        on_created: Callable[[SandboxInfo], Awaitable[None]] | None = None,
    ) -> SessionRecord:
        """Create a sandbox and restore the latest snapshot into it.
        ``on_created`` runs as soon as the sandbox exists (the turn's runner
        starts there, overlapping its start-up with the restore)."""
        record = lease.record
        fallback = record.state
        if not record.sdk_session_id:
            record = await lease.update(SessionChanges(sdk_session_id=str(uuid.uuid4())))
        record = await lease.update(SessionChanges(state=SessionState.HYDRATING))
        started = time.monotonic()
        try:
            info = await self._provider.create(
                SandboxSpec(
                    session_id=record.session_id,
                    env=allowlisted(self.config.server_env, self.config.env_allowlist),
                    image=self.config.sandbox_image,
                )
            )
        except SessiondError as exc:
            await lease.update(SessionChanges(state=fallback))
            raise Unavailable(f"sandbox failed to start: {exc}") from exc
        try:
            record = await lease.update(
                SessionChanges(sandbox_id=info.sandbox_id, sandbox_cwd=info.workdir)
            )
            if on_created is not None:
                await on_created(info)
            project_key = await self._restore_into(lease, info)
            if record.project_key and record.project_key != project_key:
                await self._meta.transcripts.move_session(
                    record.tenant_id, record.sdk_session_id or "", record.project_key, project_key
                )
            record = await lease.update(
                SessionChanges(state=SessionState.ACTIVE, project_key=project_key, touch=True)
            )
        except BaseException as exc:
            await self._destroy_quietly(info.sandbox_id)
            if not lease.lost.is_set():
                await lease.update(SessionChanges(state=fallback, sandbox_id="", sandbox_cwd=""))
            if isinstance(exc, SessiondError | OSError):
                raise Unavailable(f"hydrating session {record.session_id} failed: {exc}") from exc
            raise
        log.info(
            "hydrated session=%s sandbox=%s seconds=%.2f",
            record.session_id,
            info.sandbox_id,
            time.monotonic() - started,
        )
        return record

    async def _restore_into(self, lease: Lease, info: SandboxInfo) -> str:
        """Restore the latest snapshot into the sandbox (if any); return the
        project key of the sandbox's working directory. The key is computed
        here with the SDK's own function (the server imported the SDK long
        ago; the hydrator would need a second to) and handed to the hydrator,
        which uses it when the workdir is a real path in the sandbox and
        reports the key it used."""
        record = lease.record
        expected = str(project_key_for_directory(info.workdir))
        args = [
            "restore",
            "--session",
            record.session_id,
            "--cwd",
            info.workdir,
            "--config-dir",
            info.config_dir,
            "--epoch",
            str(lease.epoch),
            "--progress",
            "none",
            f"--project-key={expected}",  # (keys start with "-": one argument)
        ]
        code, out, err = await self._hydrator(lease, args)
        if code != 0:
            raise Unavailable(f"restore exited with {code}: {_tail(err)}")
        key = _last_json(out).get("project_key")
        return key if isinstance(key, str) and key else expected

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        try:
            await self._provider.destroy(sandbox_id)
        except Exception:
            log.exception("destroying sandbox %s failed", sandbox_id)

    # -- turns -------------------------------------------------------------------

    async def query(
        self,
        tenant_id: str,
        session_id: str,
        prompt: str,
        *,
        options: dict[str, Any] | None = None,
        snapshot_after: bool = False,
    ) -> AsyncIterator[TurnEvent]:
        await self._live(tenant_id, session_id)
        yield TurnEvent(phase="queued")
        async with self._leases.hold(tenant_id, session_id) as lease:
            runner: TurnRunner | None = None
            # (Asked before any hydration re-keys the transcript.)
            resume = await self._transcript_exists(lease.record)

            async def start(info: SandboxInfo) -> None:
                nonlocal runner
                runner = await self._start_runner(lease, info, options or {}, resume)

            try:
                if not self._has_live_sandbox(lease.record):
                    yield TurnEvent(phase="hydrating")
                # A new sandbox starts the runner as soon as it exists;
                # a live one gets it here.
                await self.ensure_sandbox(lease, on_created=start)
                if runner is None:
                    await start(await self._provider.describe(lease.record.sandbox_id or ""))
                assert runner is not None
                yield TurnEvent(phase="running")
                await runner.send(prompt)
                async for event in runner.events():
                    lease.check()
                    yield event
            except BaseException:
                if runner is not None:
                    await runner.kill()
                raise
            finally:
                if runner is not None and not lease.lost.is_set():
                    await lease.update(
                        SessionChanges(add_turns=1 if runner.got_result else 0, touch=True)
                    )
            policy = lease.record.snapshot_policy.get("after_each_turn", False)
            snapshot_id = ""
            if snapshot_after or policy:
                yield TurnEvent(phase="snapshotting")
                snapshot_id = await self.snapshot(lease, trigger="turn")
            yield TurnEvent(phase="done", snapshot_id=snapshot_id)

    @staticmethod
    def _has_live_sandbox(record: SessionRecord) -> bool:
        return record.state is SessionState.ACTIVE and bool(record.sandbox_id)

    async def _transcript_exists(self, record: SessionRecord) -> bool:
        """Whether the SDK session already has a transcript (resume it) or
        not (start it under its pre-assigned id)."""
        if not record.project_key or not record.sdk_session_id:
            return False
        _, seq = await self._meta.transcripts.last_position(
            record.tenant_id, TranscriptKey(record.project_key, record.sdk_session_id)
        )
        return seq > 0

    async def _start_runner(
        self, lease: Lease, info: SandboxInfo, overrides: dict[str, Any], resume: bool
    ) -> TurnRunner:
        record = lease.record
        assert record.sandbox_id and record.sdk_session_id
        options = {**record.agent_options, **{k: v for k, v in overrides.items() if v}}
        return await TurnRunner.start(
            self._provider,
            record.sandbox_id,
            command=self.config.hydrator_command,
            env=self._call_env(record, info),
            session_id=record.session_id,
            workdir=info.workdir,
            config_dir=info.config_dir,
            sdk_session_id=record.sdk_session_id,
            resume=resume,
            options=options,
        )

    # -- snapshots / suspend -----------------------------------------------------

    async def snapshot(self, lease: Lease, *, trigger: str) -> str:
        """Snapshot the live sandbox; return the snapshot id."""
        started, ok = time.monotonic(), False
        try:
            snapshot_id = await self._snapshot(lease, trigger)
            ok = True
            return snapshot_id
        finally:
            self._observe("snapshot", trigger, started, ok)

    async def _snapshot(self, lease: Lease, trigger: str) -> str:
        record = lease.record
        if not record.sandbox_id or not record.sandbox_cwd:
            raise FailedPrecondition(f"session {record.session_id} has no sandbox to snapshot")
        uuid_, seq = (None, 0)
        if record.project_key and record.sdk_session_id:
            uuid_, seq = await self._meta.transcripts.last_position(
                record.tenant_id, TranscriptKey(record.project_key, record.sdk_session_id)
            )
        args = [
            "snapshot",
            "--session",
            record.session_id,
            "--cwd",
            record.sandbox_cwd,
            "--epoch",
            str(lease.epoch),
            "--trigger",
            trigger,
            "--transcript-seq",
            str(seq),
            "--progress",
            "none",
        ]
        if uuid_:
            args += ["--transcript-uuid", uuid_]
        code, out, err = await self._hydrator(lease, args)
        if code != 0:
            raise Unavailable(f"snapshot exited with {code}: {_tail(err)}")
        snapshot_id = _last_json(out).get("snapshot_id")
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise Unavailable("snapshot did not report a snapshot id")
        lease.record = await self._meta.sessions.get(record.tenant_id, record.session_id)
        return snapshot_id

    async def suspend(
        self,
        tenant_id: str,
        session_id: str,
        *,
        trigger: str = "manual",
        lease_record: SessionRecord | None = None,
    ) -> tuple[SessionRecord, str]:
        """Snapshot the session and destroy its sandbox. Returns the record and
        the snapshot id ("" if there was no sandbox)."""
        await self._live(tenant_id, session_id)
        async with self._leases.hold(tenant_id, session_id, record=lease_record) as lease:
            return await self._suspend(lease, trigger)

    async def _suspend(self, lease: Lease, trigger: str) -> tuple[SessionRecord, str]:
        record = lease.record
        if record.state is not SessionState.ACTIVE or not record.sandbox_id:
            return record, ""
        sandbox_id = record.sandbox_id
        await lease.update(SessionChanges(state=SessionState.SUSPENDING))
        try:
            snapshot_id = await self.snapshot(lease, trigger=trigger)
        except BaseException:
            if not lease.lost.is_set():
                await lease.update(SessionChanges(state=SessionState.ACTIVE))
            raise
        # The snapshot is committed: only now may the sandbox go.
        await self._destroy_quietly(sandbox_id)
        record = await lease.update(
            SessionChanges(state=SessionState.SUSPENDED, sandbox_id="", sandbox_cwd="")
        )
        log.info(
            "suspended session=%s snapshot=%s trigger=%s", record.session_id, snapshot_id, trigger
        )
        return record, snapshot_id

    async def resume(self, tenant_id: str, session_id: str) -> SessionRecord:
        await self._live(tenant_id, session_id)
        async with self._leases.hold(tenant_id, session_id) as lease:
            return await self.ensure_sandbox(lease)

    async def destroy_sandbox(self, record: SessionRecord) -> None:
        """Best effort, for DeleteSession."""
        if record.sandbox_id:
            await self._destroy_quietly(record.sandbox_id)

    async def suspend_claimed(self, record: SessionRecord, trigger: str) -> None:
        """Suspend a session whose lease the caller already acquired."""
        await self.suspend(
            record.tenant_id, record.session_id, trigger=trigger, lease_record=record
        )


def _tail(err: bytes, limit: int = 300) -> str:
    """The last line of a hydrator's stderr (its one-line error), bounded."""
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][-limit:] if lines else "no error output"


def _last_json(out: bytes) -> dict[str, Any]:
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}
