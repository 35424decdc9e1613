"""Real processes behind the fake envd's ``process.Process`` service.

A :class:`FakeProcess` is a host subprocess started the way envd starts one:
``cmd`` + ``args`` in ``cwd`` with ``PATH``/``HOME``/``USER``/``LOGNAME``, the
sandbox's env vars and the request's env vars; stdin is a pipe only when the
request asks for it (else ``/dev/null``); the process is *not* made a process
group leader (envd does not ``Setpgid``), and a signal reaches the process
alone, never its children. Output is cut into ≤32 KiB ``data`` events in the
order it arrives; after exit, output still buffered in the pipes is delivered
(a short grace for a grandchild holding them open, then they are closed, as
Go's ``cmd.Wait`` does) and an ``end`` event reports the exit like Go's
``ProcessState``: ``exit status N``, or ``exit_code=-1`` and ``signal: killed``.

Two isolation modes decide what a command sees as the sandbox:

* ``namespace`` (used when ``unshare --mount`` works here): the command runs
  in a private mount namespace with the sandbox's ``/home`` and ``/tmp`` bind
  mounted over the host's, so ``/home/user/...`` paths, ``pwd`` and ``cwd`` are
  the sandbox's own. The rest of the host (``/usr``, ``/etc``...) is shared.
* ``translate`` (fallback): cwd and env values under ``/home`` or ``/tmp``
  are translated to host paths; commands see host paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb

from tests.fakee2b.paths import SANDBOX_HOME

CHUNK = 32 << 10
PIPE_GRACE = 0.2
MOUNTED = ("/home", "/tmp")
# Marks every process of a sandbox (inherited by children), so a DELETE can
# find and kill all of them, orphans included, as tearing down a VM would.
MARKER = "E2B_FAKE_SANDBOX_ID"

# Go's signal names, as ProcessState.String() prints them.
GO_SIGNAL_NAMES = {
    signal.SIGHUP: "hangup",
    signal.SIGINT: "interrupt",
    signal.SIGQUIT: "quit",
    signal.SIGILL: "illegal instruction",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGKILL: "killed",
    signal.SIGUSR1: "user defined signal 1",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGUSR2: "user defined signal 2",
    signal.SIGPIPE: "broken pipe",
    signal.SIGALRM: "alarm clock",
    signal.SIGTERM: "terminated",
}

NS_SCRIPT = 'mount --bind "$1" /home && mount --bind "$2" /tmp && cd "$3" && shift 3 && exec "$@"'

Event = (
    tuple[Literal["data"], Literal["stdout", "stderr"], bytes]
    | tuple[Literal["end"], process_pb.ProcessEvent.EndEvent]
)


class Isolation(enum.Enum):
    NAMESPACE = "namespace"
    TRANSLATE = "translate"


def namespace_prefix() -> list[str] | None:
    """The ``unshare`` argv prefix that gives a command a private mount
    namespace in which bind mounts over ``/home`` and ``/tmp`` work, or None
    when that is not possible on this host."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("mount") is None:
        return None
    if not all(os.path.isdir(p) for p in MOUNTED):
        return None
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(2, "--map-root-user")
    with tempfile.TemporaryDirectory(prefix="fakee2b-probe-") as tmp:
        home, tmpdir = Path(tmp, "home"), Path(tmp, "tmp")
        (home / "user").mkdir(parents=True)
        tmpdir.mkdir()
        argv = [*prefix, "/bin/sh", "-c", NS_SCRIPT, "probe", str(home), str(tmpdir)]
        argv += [SANDBOX_HOME, "/bin/sh", "-c", '[ "$(pwd)" = /home/user ]']
        try:
            ok = subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    return prefix if ok else None


def end_event(returncode: int) -> process_pb.ProcessEvent.EndEvent:
    """The ``end`` event envd sends for a process that exited with
    ``returncode`` (negative: killed by that signal)."""
    if returncode >= 0:
        status = f"exit status {returncode}"
        return process_pb.ProcessEvent.EndEvent(
            exit_code=returncode,
            exited=True,
            status=status,
            error=None if returncode == 0 else status,
        )
    name = GO_SIGNAL_NAMES.get(signal.Signals(-returncode), f"signal {-returncode}")
    status = f"signal: {name}"
    return process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=status, error=status)


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, owner: FakeProcess) -> None:
        self._owner = owner

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self._owner._on_data(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._owner._on_eof(fd)

    def process_exited(self) -> None:
        self._owner._exited.set()


class FakeProcess:
    """One started command. Events go to every subscriber from the moment it
    subscribed (like envd, no replay of earlier output)."""

    def __init__(
        self, config: process_pb.ProcessConfig, tag: str | None, stdin_enabled: bool
    ) -> None:
        self.config = config
        self.tag = tag
        self.stdin_enabled = stdin_enabled
        self.pid = 0
        self.end: process_pb.ProcessEvent.EndEvent | None = None
        self.finished = asyncio.Event()
        # Subscribed before the process starts, so the Start stream that
        # created it misses nothing.
        self.initial: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers: list[asyncio.Queue[Event]] = [self.initial]
        self._open_pipes = {1, 2}
        self._pipes_done = asyncio.Event()
        self._exited = asyncio.Event()
        self._transport: asyncio.SubprocessTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finisher: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(
        cls,
        *,
        config: process_pb.ProcessConfig,
        argv: Sequence[str],
        env: Mapping[str, str],
        host_cwd: Path,
        stdin: bool,
        tag: str | None,
        timeout: float | None,
    ) -> FakeProcess:
        """Start ``argv``; ``timeout`` (seconds) kills it like envd's
        ``Connect-Timeout-Ms`` process context does."""
        proc = cls(config, tag, stdin)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: _Protocol(proc),
                *argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                cwd=host_cwd,
            )
        except OSError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"error starting process: {exc}") from exc
        proc._transport = transport
        proc.pid = transport.get_pid()
        if timeout:
            proc._timer = loop.call_later(timeout, proc.signal, signal.SIGKILL)
        proc._finisher = asyncio.create_task(proc._finish())
        return proc

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if self.end is not None:
            queue.put_nowait(("end", self.end))
        else:
            self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def signal(self, sig: int) -> None:
        """Signal the process itself (not its children), as envd does."""
        if self.end is None and not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def write_stdin(self, data: bytes) -> None:
        pipe = self._stdin_pipe()
        if pipe is None:
            raise ConnectError(Code.INTERNAL, "error writing to stdin: stdin not enabled or closed")
        pipe.write(data)

    def close_stdin(self) -> None:
        pipe = self._stdin_pipe()
        if pipe is not None:
            pipe.close()
        self.stdin_enabled = False

    def _stdin_pipe(self) -> Any:
        if not self.stdin_enabled or self._transport is None:
            return None
        pipe = self._transport.get_pipe_transport(0)
        if pipe is None or pipe.is_closing():
            return None
        return pipe

    def _broadcast(self, event: Event) -> None:
        for queue in list(self._subscribers):
            queue.put_nowait(event)

    def _on_data(self, fd: int, data: bytes) -> None:
        stream: Literal["stdout", "stderr"] = "stdout" if fd == 1 else "stderr"
        for start in range(0, len(data), CHUNK):
            self._broadcast(("data", stream, data[start : start + CHUNK]))

    def _on_eof(self, fd: int) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes:
            self._pipes_done.set()

    async def _finish(self) -> None:
        await self._exited.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pipes_done.wait(), PIPE_GRACE)
        assert self._transport is not None
        for fd in (0, 1, 2):
            pipe = self._transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
        if self._timer is not None:
            self._timer.cancel()
        returncode = self._transport.get_returncode()
        self.end = end_event(-signal.SIGKILL if returncode is None else returncode)
        self._broadcast(("end", self.end))
        self._subscribers.clear()
        self.finished.set()
        self._transport.close()
