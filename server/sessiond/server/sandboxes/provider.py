"""The SandboxProvider protocol: create, exec in, copy files to/from, and
destroy the ephemeral machines agents run in.

Implementations: ``local`` (a directory and subprocesses on the server's
host — the embedded default), ``e2b`` (E2B cloud sandboxes through the
``e2b`` SDK) and ``docker`` (containers of the Dockerfile's sandbox target).
Every implementation runs the contract suite in
``tests/contracts/test_sandbox_provider.py``.

Errors are translated at this edge: an unknown or destroyed sandbox raises
``NotFound``; a provider that cannot be reached or fails to create a sandbox
raises ``Unavailable``; bad arguments raise ``InvalidArgument``. A command
that runs and exits non-zero is not an error: its exit code is reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What a sandbox is created for."""

    # Session the sandbox serves (for naming/labels; never a path by itself).
    session_id: str
    # Environment every command in the sandbox gets (credentials allowlisted
    # by the server, the sandbox's scoped token, CLAUDE_* dirs, ...).
    env: Mapping[str, str] = field(default_factory=dict)
    # Provider-specific template/image; empty = the provider's default.
    image: str = ""
    # Seconds of provider-side lifetime (E2B timeouts); 0 = provider default.
    timeout_seconds: int = 0


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    sandbox_id: str
    provider: str
    # Absolute working directory for the agent inside the sandbox.
    workdir: str
    # Absolute CLAUDE_CONFIG_DIR inside the sandbox.
    config_dir: str
    # "running" or "stopped".
    state: str = "running"
    # How the sandbox reaches the sessiond server, when it differs from the
    # server's advertised address (e.g. host.docker.internal); "" = default.
    server_address: str = ""


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """A piece of a running command's output."""

    stream: Stream
    data: bytes


class Execution(Protocol):
    """A command started in a sandbox."""

    def events(self) -> AsyncIterator[ExecEvent]:
        """Output as it is produced, in order per stream; ends when the
        command exits (after all output has been delivered). One consumer.
        Implementations buffer a bounded amount: a consumer that stops
        reading may stall the command or lose output, never fill memory.
        Output of descendants that outlive the command may be cut off a few
        seconds after it exits."""
        ...

    async def wait(self) -> int:
        """The exit code (waits for exit). A command killed by signal N
        reports 128 + N (137 for SIGKILL), as shells and container runtimes
        do: Docker cannot tell a death by signal from ``exit(128 + N)``, so
        no provider reports anything else (e.g. ``subprocess``'s ``-N``)."""
        ...

    async def kill(self) -> None:
        """Kill the command and everything it started. Idempotent."""
        ...


@runtime_checkable
class SandboxProvider(Protocol):
    name: str

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """A fresh, empty sandbox (an empty workdir and config dir).
        ``Unavailable`` if it cannot be created."""
        ...

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Execution:
        """Start ``argv`` (no shell) in the sandbox with the sandbox's env
        plus ``env`` (which wins), in ``cwd`` (default: the workdir). ``stdin``
        is written then closed; ``None`` = end-of-file at once. ``NotFound``
        if the sandbox is gone; ``InvalidArgument`` for an empty ``argv`` or
        a ``cwd`` that is not an absolute directory in the sandbox. A command
        that cannot be started is not an error: it reports exit code 127 (not
        found) or 126 (not executable), as a shell would."""
        ...

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file, creating parents; an existing file is replaced.
        ``path`` must be absolute, inside the sandbox and free of ``..``
        components (``InvalidArgument``), as for :meth:`get_file`. The
        sandbox's commands may read and modify the file."""
        ...

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        """Read a file; ``NotFound`` if it or the sandbox does not exist;
        ``InvalidArgument`` for a path that is relative, has a ``..``
        component or leads outside the sandbox, or for a non-regular file."""
        ...

    async def kill_all(self, sandbox_id: str) -> None:
        """Kill every command running in the sandbox (and what they started),
        keeping its files. Used when a replica takes over a session whose
        previous holder may have left a turn running. ``NotFound`` if gone."""
        ...

    async def describe(self, sandbox_id: str) -> SandboxInfo:
        """``NotFound`` once destroyed."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Kill everything in the sandbox and delete it. Idempotent."""
        ...

    async def close(self) -> None:
        """Release clients. Does not destroy sandboxes."""
        ...


async def run(
    provider: SandboxProvider,
    sandbox_id: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a command to completion: (exit code, stdout, stderr)."""
    execution = await provider.exec(sandbox_id, argv, env=env, stdin=stdin)
    out, err = bytearray(), bytearray()
    async for event in execution.events():
        (out if event.stream == "stdout" else err).extend(event.data)
    return await execution.wait(), bytes(out), bytes(err)
