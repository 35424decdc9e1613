"""E2BSandboxProvider: sandboxes as E2B cloud sandboxes, through the e2b SDK's
async API (``e2b`` ≥ 2.6).

How the protocol maps onto E2B:

* ``create`` → ``AsyncSandbox.create(template, timeout, envs, metadata=
  {"sessiond_session": …})`` (``POST /v2/sandboxes``), then ``files.make_dir``
  of the workdir and the config dir (envd ``Filesystem/MakeDir``). The spec's
  env becomes the sandbox's env vars, so every command — also from another
  provider instance — gets it.
* ``exec`` → ``commands.run(shlex.join(argv), background=True, …)`` (envd
  ``Process/Start``, a server stream). envd runs it as ``bash -l -c``; the
  command is wrapped in ``setsid`` so it leads its own process group: envd's
  kill signals one process only, and ``Execution.kill`` must also reach the
  command's children and grandchildren. stdin is ``stdin=True`` +
  ``send_stdin`` chunks + ``close_stdin``, fed by a background task so a
  command that writes before it reads cannot deadlock ``exec``.
* ``put_file``/``get_file`` → ``files.write`` (octet-stream ``POST /files``)
  then ``files.get_info`` (``Filesystem/Stat``) and, if the file's mode is not
  the one asked for, ``chmod`` (E2B's file API has no mode) / ``get_info``
  (only a regular file is read) then ``files.read`` (streamed ``GET /files``).
* ``describe`` → ``get_info`` (``GET /sandboxes/{id}``): running, or paused →
  "stopped". ``destroy`` → ``kill`` (``DELETE /sandboxes/{id}``, a 404 is
  success). A sandbox created by another instance is reached with
  ``AsyncSandbox.connect`` (``POST /v2/sandboxes/{id}/connect``).

Output: the SDK hands command output over as text decoded as UTF-8 (invalid
bytes become U+FFFD), so ``ExecEvent.data`` is that text re-encoded: exact for
UTF-8 output, lossy for binary — move binary data with the file calls. Output
is buffered up to ``OUTPUT_BUFFER`` bytes per command, then the stream is
back-pressured; ``wait()`` without ``events()`` discards the output.

Exit codes: ≥ 0 is the exit status; a command killed by signal N reports
128 + N (envd says ``-1`` + ``"signal: killed"``: that is 137); a command whose
sandbox was destroyed or expired under it reports 137 as well. A command that
cannot be started reports 127 (not found) / 126 (not executable), as ``setsid``
and the shell do.

Errors are translated here (``raise … from exc``)::

    SandboxNotFoundException, SandboxNotRunningException,
    FileNotFoundException, NotFoundException        → NotFound
    InvalidArgumentException (e.g. a missing cwd)  → InvalidArgument
    NotEnoughSpaceException                        → ResourceExhausted
    AuthenticationException (bad API key)          → Unavailable
    timeouts, rate limits, 5xx, unreachable        → Unavailable

A rejected API key is ``Unavailable``, not ``Unauthenticated``: the key is the
server's configuration, not the caller's credential, and ``UNAUTHENTICATED``
would tell a client that *its* token is bad. Messages and logs never contain
the API key, envd tokens, env values, file contents or argv.

Every call is bounded: the SDK's ``request_timeout`` per HTTP request, an
outer deadline of ``2 × request_timeout + 5 s`` around each SDK call (file
transfers add ``size / MIN_TRANSFER_RATE``; downloads are bounded per read by
``request_timeout``), and a command's stream by the sandbox lifetime the
provider knows (envd kills the command when it passes, as the sandbox's end
would). A ``create`` cancelled after E2B made the sandbox leaks it until its
E2B timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from e2b import (
    E2B,
    AsyncCommandHandle,
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileType,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxState,
)

from sessiond.client.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SessiondError,
    Unavailable,
)

from .provider import ExecEvent, SandboxInfo, SandboxSpec, Stream

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTPUT_BUFFER = 4 << 20
STDIN_CHUNK = 64 << 10
MIN_TRANSFER_RATE = 1 << 20  # bytes/s a file transfer is allowed to crawl at
METADATA_SESSION = "sessiond_session"
KILLED = 128 + int(signal.SIGKILL)
_ENV_NAME = re.compile(r"[^=\0]+\Z")
_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# Go's ProcessState strings for the signals a command may die of.
_GO_SIGNALS = {
    "hangup": signal.SIGHUP,
    "interrupt": signal.SIGINT,
    "quit": signal.SIGQUIT,
    "illegal instruction": signal.SIGILL,
    "aborted": signal.SIGABRT,
    "bus error": signal.SIGBUS,
    "floating point exception": signal.SIGFPE,
    "killed": signal.SIGKILL,
    "user defined signal 1": signal.SIGUSR1,
    "segmentation fault": signal.SIGSEGV,
    "user defined signal 2": signal.SIGUSR2,
    "broken pipe": signal.SIGPIPE,
    "alarm clock": signal.SIGALRM,
    "terminated": signal.SIGTERM,
}


def exit_code(code: int, error: str | None) -> int:
    """envd's exit report as the protocol's exit code (128 + N for signal N)."""
    if code == -1 and error and error.startswith("signal: "):
        name = error.removeprefix("signal: ").removesuffix(" (core dumped)").strip()
        if name in _GO_SIGNALS:
            return 128 + int(_GO_SIGNALS[name])
    return code


def shell_command(argv: Sequence[str]) -> str:
    """The shell line that runs ``argv`` (no shell semantics) as the leader of
    a new session, hence of a process group whose id is the command's pid."""
    cmd = shlex.join(argv)
    return (
        "if command -v setsid >/dev/null 2>&1; "
        f"then exec setsid -w -- {cmd}; else exec -- {cmd}; fi"
    )


class E2BExecution:
    """A command running in an E2B sandbox (see the module docstring for
    output, buffering and exit-code conventions)."""

    def __init__(
        self,
        label: str,
        kill_group: Callable[[int], Awaitable[None]],
        translate: Callable[[BaseException], SessiondError],
    ) -> None:
        self._label = label
        self._kill_group = kill_group
        self._translate = translate
        self._queue: asyncio.Queue[ExecEvent | None] = asyncio.Queue()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._reading = False
        self._discard = False
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._handle: AsyncCommandHandle[None] | None = None
        self._request_timeout = 30.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int:
        """The command's pid inside the sandbox (0 before it started)."""
        return self._handle.pid if self._handle is not None else 0

    async def on_stdout(self, text: str) -> None:
        await self._output("stdout", text)

    async def on_stderr(self, text: str) -> None:
        await self._output("stderr", text)

    async def _output(self, stream: Stream, text: str) -> None:
        data = text.encode()
        while self._buffered >= OUTPUT_BUFFER and not self._discard:
            self._room.clear()
            await self._room.wait()
        if self._discard or not data:
            return
        self._buffered += len(data)
        self._queue.put_nowait(ExecEvent(stream, data))

    def attach(
        self, handle: AsyncCommandHandle[None], stdin: bytes | None, request_timeout: float
    ) -> None:
        """Start following ``handle`` (and feeding ``stdin`` to it)."""
        self._handle = handle
        self._request_timeout = request_timeout
        self._spawn(self._finish(handle))
        if stdin is not None:
            self._spawn(self._feed(handle, stdin, request_timeout))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, handle: AsyncCommandHandle[None]) -> None:
        try:
            result = await handle.wait()
            self._exit.set_result(result.exit_code)
        except CommandExitException as exc:
            self._exit.set_result(exit_code(exc.exit_code, exc.error))
        except (SandboxNotFoundException, SandboxNotRunningException):
            # The sandbox was destroyed or expired: so was the command.
            self._exit.set_result(KILLED)
        except Exception as exc:
            self._exit.set_exception(self._translate(exc))
        finally:
            self._queue.put_nowait(None)

    async def _feed(
        self, handle: AsyncCommandHandle[None], data: bytes, request_timeout: float
    ) -> None:
        # A command may exit or close stdin before reading it all: like a
        # broken pipe locally, that ends the feeding and is not an error.
        try:
            for start in range(0, len(data), STDIN_CHUNK):
                await handle.send_stdin(data[start : start + STDIN_CHUNK], request_timeout)
        except Exception as exc:
            log.debug("%s: stdin not fully delivered (%s)", self._label, type(exc).__name__)
        try:
            await handle.close_stdin(request_timeout)
        except Exception as exc:
            log.debug("%s: closing stdin failed (%s)", self._label, type(exc).__name__)

    async def events(self) -> AsyncIterator[ExecEvent]:
        """Output in order; ends after the last output once the command exited."""
        self._reading = True
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)
                return
            self._buffered -= len(item.data)
            if self._buffered < OUTPUT_BUFFER:
                self._room.set()
            yield item

    async def wait(self) -> int:
        """The exit code. Called without anyone reading ``events()``, it
        discards the output so the command is never blocked on it."""
        if not self._reading:
            self._discard = True
            self._room.set()
            while not self._queue.empty():
                if self._queue.get_nowait() is None:
                    self._queue.put_nowait(None)
                    break
            self._buffered = 0
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        """SIGKILL the command's process group, then the command itself.
        Idempotent; a command or sandbox already gone is not an error."""
        handle = self._handle
        if handle is None or self._exit.done():
            return
        await self._kill_group(handle.pid)
        try:
            async with asyncio.timeout(2 * self._request_timeout + 5):
                await handle.kill()
        except (NotFoundException, SandboxNotRunningException):
            pass
        except Exception as exc:
            raise self._translate(exc) from exc


class E2BSandboxProvider:
    """The ``e2b`` SandboxProvider. ``api_url``/``sandbox_url`` point the SDK
    at another control API / envd address (tests, self-hosted E2B); ``None``
    means E2B's cloud. ``tmp_dir`` becomes the sandboxes' TMPDIR and
    CLAUDE_CODE_TMPDIR; ``request_timeout_seconds`` bounds each HTTP request.
    Numbers may be given as strings (the registry passes URL options)."""

    name = "e2b"

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        template: str = "base",
        timeout_seconds: int = 3600,
        workdir: str = "/home/user/workspace",
        config_dir: str = "/home/user/.claude",
        tmp_dir: str = "/home/user/.tmp",
        request_timeout_seconds: float = 30.0,
    ) -> None:
        if not api_key:
            raise InvalidArgument("the e2b provider needs an API key")
        for directory in (workdir, config_dir, tmp_dir):
            self._check_path(directory)
        try:
            lifetime, request_timeout = int(timeout_seconds), float(request_timeout_seconds)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument("e2b timeouts must be numbers") from exc
        if lifetime <= 0 or not 0 < request_timeout < float("inf"):
            raise InvalidArgument("e2b timeouts must be positive")
        self._api_key = api_key
        self._api_url = api_url
        self._template = template
        self._timeout_seconds = lifetime
        self._workdir = workdir
        self._config_dir = config_dir
        self._tmp_dir = tmp_dir
        self._request_timeout = request_timeout
        options: dict[str, Any] = {"api_key": api_key, "request_timeout": request_timeout}
        if api_url is not None:
            options["api_url"] = api_url
        if sandbox_url is not None:
            options["sandbox_url"] = sandbox_url
        self._client = E2B(**options)
        self._sandboxes: dict[str, AsyncSandbox] = {}
        self._lifetimes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"E2BSandboxProvider(api_url={self._api_url!r}, template={self._template!r})"

    # -- helpers ------------------------------------------------------------------

    def _deadline(self, extra: float = 0.0) -> float:
        return 2 * self._request_timeout + 5 + extra

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***")[:500]

    def _translate(self, exc: BaseException, what: str) -> SessiondError:
        if isinstance(exc, SessiondError):
            return exc
        detail = f"e2b: {what}: {type(exc).__name__}: {self._scrub(str(exc))}"
        if isinstance(exc, NotFoundException | SandboxNotRunningException):
            return NotFound(detail)
        if isinstance(exc, InvalidArgumentException):
            return InvalidArgument(detail)
        if isinstance(exc, NotEnoughSpaceException):
            return ResourceExhausted(detail)
        if isinstance(exc, AuthenticationException):
            return Unavailable(f"e2b: {what}: E2B rejected the configured API key")
        if isinstance(exc, TimeoutError):
            return Unavailable(f"e2b: {what}: timed out")
        return Unavailable(detail)

    @staticmethod
    def _check_id(sandbox_id: str) -> None:
        if not _SANDBOX_ID.fullmatch(sandbox_id):
            raise InvalidArgument(f"not an e2b sandbox id: {sandbox_id!r}")

    @staticmethod
    def _check_path(path: str) -> None:
        """Absolute, no NUL, no ``..`` component (every absolute path is
        inside an E2B sandbox: it is a whole machine)."""
        if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
            raise InvalidArgument(f"sandbox paths must be absolute, without '..': {path!r}")

    @staticmethod
    def _check_env(env: Mapping[str, str], what: str) -> None:
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise InvalidArgument(f"{what}: invalid variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                # The value may be a credential: name the variable only.
                raise InvalidArgument(f"{what}: value of {key} must be a string without NUL")

    async def _sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """The SDK handle of a sandbox, connecting (and resuming a paused
        one) when this instance did not create it."""
        self._check_id(sandbox_id)
        cached = self._sandboxes.get(sandbox_id)
        if cached is not None:
            return cached
        try:
            async with asyncio.timeout(self._deadline()):
                sandbox = await self._client.AsyncSandbox.connect(sandbox_id)
        except Exception as exc:
            raise self._translate(exc, f"connect to sandbox {sandbox_id}") from exc
        self._sandboxes[sandbox_id] = sandbox
        return sandbox

    async def _on_sandbox(
        self,
        sandbox_id: str,
        what: str,
        operation: Callable[[AsyncSandbox], Awaitable[T]],
        extra_seconds: float | None = 0.0,
    ) -> T:
        """Run ``operation`` on the sandbox's SDK handle within the deadline,
        translating errors. A cached handle whose envd answers "not running"
        may be stale (the sandbox was paused): it is dropped and the call is
        retried once through ``connect``, which resumes a paused sandbox and
        answers 404 (``NotFound``) for a dead one."""
        for attempt in range(2):
            cached = sandbox_id in self._sandboxes
            sandbox = await self._sandbox(sandbox_id)
            try:
                deadline = None if extra_seconds is None else self._deadline(extra_seconds)
                async with asyncio.timeout(deadline):
                    return await operation(sandbox)
            except Exception as exc:
                error = self._translate(exc, what)
                if isinstance(error, NotFound):
                    self._sandboxes.pop(sandbox_id, None)
                    if cached and attempt == 0 and isinstance(exc, SandboxNotRunningException):
                        continue
                raise error from exc
        raise AssertionError("unreachable")

    def _info(self, sandbox_id: str, state: str = "running") -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=sandbox_id,
            provider=self.name,
            workdir=self._workdir,
            config_dir=self._config_dir,
            state=state,
        )

    # -- SandboxProvider ------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """A fresh sandbox from ``spec.image`` (default: the provider's
        template) living ``spec.timeout_seconds`` (default: the provider's),
        with the workdir, config dir and tmp dir made. Its env is ``spec.env``
        plus CLAUDE_CONFIG_DIR, CLAUDE_CODE_TMPDIR and TMPDIR (which win).
        ``Unavailable`` when E2B cannot make it (``InvalidArgument`` for a
        malformed env or a request E2B rejects as malformed)."""
        self._check_env(spec.env, "SandboxSpec.env")
        started = time.monotonic()
        template = spec.image or self._template
        lifetime = spec.timeout_seconds or self._timeout_seconds
        env = {
            **spec.env,
            "CLAUDE_CONFIG_DIR": self._config_dir,
            "CLAUDE_CODE_TMPDIR": self._tmp_dir,
            "TMPDIR": self._tmp_dir,
        }
        try:
            async with asyncio.timeout(self._deadline()):
                sandbox = await self._client.AsyncSandbox.create(
                    template=template,
                    timeout=lifetime,
                    envs=env,
                    metadata={METADATA_SESSION: spec.session_id},
                    idempotency_key=str(uuid.uuid4()),
                )
        except Exception as exc:
            error = self._translate(exc, f"create a sandbox from template {template!r}")
            if not isinstance(error, InvalidArgument):
                error = Unavailable(str(error))
            raise error from exc
        sandbox_id = sandbox.sandbox_id
        try:
            async with asyncio.timeout(self._deadline()):
                for directory in (self._workdir, self._config_dir, self._tmp_dir):
                    await sandbox.files.make_dir(directory)
        except Exception as exc:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._deadline()):
                    await sandbox.kill()
            error = self._translate(exc, f"prepare sandbox {sandbox_id}")
            raise Unavailable(str(error)) from exc
        self._sandboxes[sandbox_id] = sandbox
        self._lifetimes[sandbox_id] = lifetime
        log.info(
            "created e2b sandbox %s for session %s from template %s in %.2fs",
            sandbox_id,
            spec.session_id,
            template,
            time.monotonic() - started,
        )
        return self._info(sandbox_id)

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> E2BExecution:
        """Start ``argv`` (no shell) with the sandbox's env plus ``env`` (which
        wins) in ``cwd`` (default: the workdir); ``stdin`` is written then
        closed (``None``: end-of-file at once). ``NotFound`` if the sandbox is
        gone; ``InvalidArgument`` for an empty ``argv`` or a ``cwd`` that is
        not an absolute directory in the sandbox (envd checks it)."""
        if not argv or any(not isinstance(a, str) or "\0" in a for a in argv):
            raise InvalidArgument("argv must be a non-empty list of strings without NUL")
        self._check_env(env or {}, "env")
        if cwd is not None:
            self._check_path(cwd)
        label = f"exec in e2b sandbox {sandbox_id}"
        lifetime = self._lifetimes.get(sandbox_id, self._timeout_seconds)

        async def start(sandbox: AsyncSandbox) -> E2BExecution:
            execution = E2BExecution(
                label,
                lambda pid: self._kill_group(sandbox, pid),
                lambda exc: self._translate(exc, label),
            )
            handle = await sandbox.commands.run(
                shell_command(argv),
                background=True,
                envs=dict(env) if env else None,
                cwd=cwd or self._workdir,
                on_stdout=execution.on_stdout,
                on_stderr=execution.on_stderr,
                stdin=stdin is not None,
                timeout=lifetime,
                request_timeout=self._request_timeout,
                retain_output=False,
            )
            execution.attach(handle, stdin, self._request_timeout)
            return execution

        execution = await self._on_sandbox(sandbox_id, label, start)
        log.info("%s: started pid %s (%d args)", label, execution.pid, len(argv))
        return execution

    async def _kill_group(self, sandbox: AsyncSandbox, pid: int) -> None:
        """SIGKILL process group ``pid`` (the command's, see ``shell_command``)."""
        try:
            async with asyncio.timeout(self._deadline()):
                await sandbox.commands.run(
                    f"kill -KILL -- -{int(pid)} 2>/dev/null; true",
                    timeout=self._request_timeout,
                    request_timeout=self._request_timeout,
                )
        except Exception as exc:
            log.debug(
                "killing process group %s in e2b sandbox %s failed (%s)",
                pid,
                sandbox.sandbox_id,
                type(exc).__name__,
            )

    async def kill_all(self, sandbox_id: str) -> None:
        """SIGKILL every command envd runs in the sandbox (whichever provider
        instance started it) and its process group, keeping the files.
        ``NotFound`` if the sandbox is gone. A descendant that made itself a
        new session escapes, as it would from ``kill()``."""

        async def kill(sandbox: AsyncSandbox) -> int:
            processes = await sandbox.commands.list(request_timeout=self._request_timeout)
            targets = " ".join(f"-{int(p.pid)} {int(p.pid)}" for p in processes)
            if targets:
                await sandbox.commands.run(
                    f"kill -KILL -- {targets} 2>/dev/null; true",
                    timeout=self._request_timeout,
                    request_timeout=self._request_timeout,
                )
            return len(processes)

        count = await self._on_sandbox(sandbox_id, f"kill all in sandbox {sandbox_id}", kill)
        log.info("killed %d commands in e2b sandbox %s", count, sandbox_id)

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to the absolute ``path`` (no ``..``), creating
        parents and replacing a file there, with permission bits ``mode``.
        ``NotFound`` if the sandbox is gone; ``InvalidArgument`` for a bad
        path or mode, or a directory at ``path``."""
        self._check_path(path)
        if not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode {mode:#o} is not a permission mode")
        transfer = len(data) / MIN_TRANSFER_RATE

        async def write(sandbox: AsyncSandbox) -> None:
            await sandbox.files.write(
                path,
                data,
                request_timeout=self._request_timeout + transfer,
                use_octet_stream=True,
            )
            info = await sandbox.files.get_info(path)
            if info.mode & 0o777 != mode & 0o777 or mode & 0o7000:
                await sandbox.commands.run(
                    shlex.join(["chmod", format(mode & 0o7777, "o"), path]),
                    timeout=self._request_timeout,
                    request_timeout=self._request_timeout,
                )

        what = f"write {path} in sandbox {sandbox_id}"
        await self._on_sandbox(sandbox_id, what, write, transfer)
        log.info("wrote %d bytes to a file in e2b sandbox %s", len(data), sandbox_id)

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        """The bytes of the regular file at the absolute ``path`` (no ``..``);
        ``NotFound`` if it or the sandbox does not exist; ``InvalidArgument``
        for a bad path or anything but a regular file — a directory, a
        symlink (as the local provider), a device or FIFO that could stream
        forever."""
        self._check_path(path)

        async def read(sandbox: AsyncSandbox) -> bytes:
            info = await sandbox.files.get_info(path, request_timeout=self._request_timeout)
            if info.type != FileType.FILE:
                kind = info.type.value if info.type is not None else "special file"
                raise InvalidArgument(f"{path!r} in sandbox {sandbox_id} is a {kind}, not a file")
            out = bytearray()
            reader = await sandbox.files.read(
                path, format="stream", stream_idle_timeout=self._request_timeout
            )
            async with reader:
                async for chunk in reader:
                    out += chunk
            return bytes(out)

        what = f"read {path} in sandbox {sandbox_id}"
        # Bounded per read by the idle timeout, not as a whole (size unknown).
        data = await self._on_sandbox(sandbox_id, what, read, extra_seconds=None)
        log.info("read %d bytes from a file in e2b sandbox %s", len(data), sandbox_id)
        return data

    async def describe(self, sandbox_id: str) -> SandboxInfo:
        """Running or "stopped" (paused); ``NotFound`` once destroyed."""
        self._check_id(sandbox_id)
        try:
            async with asyncio.timeout(self._deadline()):
                info = await self._client.AsyncSandbox.get_info(sandbox_id)
        except Exception as exc:
            error = self._translate(exc, f"describe sandbox {sandbox_id}")
            if isinstance(error, NotFound):
                self._sandboxes.pop(sandbox_id, None)
            raise error from exc
        state = "running" if info.state == SandboxState.RUNNING else "stopped"
        return self._info(sandbox_id, state)

    async def destroy(self, sandbox_id: str) -> None:
        """Kill the sandbox and everything in it. Idempotent: an unknown or
        already destroyed sandbox is success."""
        self._check_id(sandbox_id)
        self._sandboxes.pop(sandbox_id, None)
        self._lifetimes.pop(sandbox_id, None)
        try:
            async with asyncio.timeout(self._deadline()):
                killed = await self._client.AsyncSandbox.kill(sandbox_id)
        except Exception as exc:
            raise self._translate(exc, f"destroy sandbox {sandbox_id}") from exc
        log.info("destroyed e2b sandbox %s%s", sandbox_id, "" if killed else " (already gone)")

    async def close(self) -> None:
        """Forget the SDK handles (the SDK's connection pools are shared
        process-wide). Sandboxes keep running."""
        self._sandboxes.clear()
        self._lifetimes.clear()
