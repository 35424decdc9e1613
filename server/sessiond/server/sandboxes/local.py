"""The local sandbox provider: a directory and process groups on the server's
own host. The embedded default.

Layout, under a root that every server replica on the host shares::

    root/<sandbox_id>/        0700  one sandbox; <sandbox_id> = "sbx-" + 24 hex
        sandbox.json          0600  session id and the sandbox env (holds credentials)
        pgids                 0600  process groups exec started, one per line
        work/                       the agent's cwd            (SandboxInfo.workdir)
        config/                     CLAUDE_CONFIG_DIR          (SandboxInfo.config_dir)
        tmp/                        CLAUDE_CODE_TMPDIR, TMPDIR
        home/                       HOME
    root/.staging/            sandboxes being created; the rename into place commits
    root/.trash/              sandboxes being destroyed; the rename here commits

Replicas share nothing but the database, so everything a later call needs is
in those files: any replica can exec into, copy files to/from and destroy a
sandbox another one created. Only an :class:`Execution` (the pipes of a
running command) belongs to the process that started it.

Each command runs in its own session and process group
(``start_new_session``) with the environment ``base env + sandbox env +
per-call env + markers``. The base env is minimal (PATH, LANG), never the
server's environment, which holds storage credentials. Two markers,
``SESSIOND_SANDBOX_ID`` and ``SESSIOND_EXEC_ID``, let ``kill`` and
``destroy`` find descendants that left the process group (``setsid``,
daemonising), together with the group ids in ``pgids`` and, on destroy, the
processes whose cwd is inside the sandbox (all found through ``/proc``; on a
system without ``/proc`` only the recorded process groups are killed).

Enforced per process through ``setrlimit`` in an exec wrapper (inherited
by children):
RLIMIT_CORE=0 always; RLIMIT_NOFILE, RLIMIT_FSIZE and RLIMIT_CPU as
:class:`LocalLimits` says. *Not* enforced — there are no cgroups or
namespaces here: total memory, total CPU, number of processes, disk usage,
network access, and filesystem isolation. The agent runs as the server's
user: it can read anything that user can, including ``/proc/<server
pid>/environ``. The minimal env keeps credentials out of the agent's
environment (and so out of tool output and transcripts); it is not a
security boundary against a hostile agent. Use docker or e2b for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sessiond.client.errors import InvalidArgument, NotFound, Unavailable
from sessiond.server.sandboxes.provider import ExecEvent, SandboxInfo, SandboxSpec, Stream

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"sbx-[0-9a-f]{24}\Z")
_ENV_NAME_RE = re.compile(r"[^=\0]+\Z")
_AREAS = ("work", "config", "tmp", "home")
_SANDBOX_FILE = "sandbox.json"
_PGIDS_FILE = "pgids"
_STAGING = ".staging"
_TRASH = ".trash"
MARK_SANDBOX = "SESSIOND_SANDBOX_ID"
MARK_EXEC = "SESSIOND_EXEC_ID"
_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

_CHUNK = 64 * 1024
# Output chunks buffered per execution before the pipes push back on the
# command (≤ 4 MiB): memory stays bounded whoever is slow.
_QUEUE_DEPTH = 64
# After a command exits, output of descendants still holding its pipes is
# delivered until the pipes stay quiet this long (Docker waits 2 s too).
DRAIN_GRACE = 2.0
_KILL_ROUNDS = 50

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class LocalLimits:
    """Per-process resource limits for every command (soft = hard, so the
    agent cannot raise them; clamped to the server's own hard limits).
    ``None`` leaves the server's limit. RLIMIT_CORE is always 0."""

    # Open file descriptors per process.
    nofile: int | None = 4096
    # Largest file a process may write, bytes.
    fsize: int | None = None
    # CPU seconds per process (SIGXCPU, then SIGKILL).
    cpu_seconds: int | None = None


def default_base_env(python: str = sys.executable) -> dict[str, str]:
    """The minimal environment every local command starts from: a PATH that
    finds ``python``'s installation first (its ``python3``, the
    ``sessiond-hydrator`` script) and a UTF-8 locale."""
    return {
        "PATH": os.pathsep.join([os.path.dirname(python), *_SYSTEM_PATH]),
        "LANG": "C.UTF-8",
    }


class LocalSandboxProvider:
    """Sandboxes as directories under ``root`` and commands as process
    groups on this host (see the module docstring for the layout, what is
    isolated and what is not).

    ``python``: the interpreter whose directory leads PATH, so ``python3``
    and ``sessiond-hydrator`` in a sandbox are the server's; it also runs
    the few-line wrapper that applies the rlimits and execs the command
    (adds roughly an interpreter start-up to every exec). ``base_env``
    replaces :func:`default_base_env` (``python``'s directory still leads
    PATH). ``SandboxSpec.image`` and ``timeout_seconds`` have no meaning here
    and are ignored.
    """

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        limits: LocalLimits | None = None,
    ) -> None:
        self._root = Path(os.path.realpath(root))
        base = dict(default_base_env(python) if base_env is None else base_env)
        base["PATH"] = os.pathsep.join(
            [os.path.dirname(python), base.get("PATH") or os.pathsep.join(_SYSTEM_PATH)]
        )
        _check_env(base, "base_env")
        self._base_env = base
        self._python = python
        self._rlimits = _rlimit_settings(limits or LocalLimits())

    @property
    def root(self) -> Path:
        return self._root

    # -- lifecycle -----------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """A fresh sandbox at a path no sandbox had before. The sandbox env is
        ``spec.env`` plus CLAUDE_CONFIG_DIR, CLAUDE_CODE_TMPDIR, TMPDIR and
        HOME pointing into it (those four always win). ``Unavailable`` if the
        directories cannot be made."""
        _check_env(spec.env, "SandboxSpec.env")
        info = await asyncio.to_thread(self._create_sync, spec)
        log.info("sandbox created: %s session=%s", info.sandbox_id, spec.session_id)
        return info

    def _create_sync(self, spec: SandboxSpec) -> SandboxInfo:
        sandbox_id = "sbx-" + secrets.token_hex(12)
        final = self._root / sandbox_id
        staging = self._root / _STAGING / sandbox_id
        try:
            staging.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging.mkdir(mode=0o700)
            for area in _AREAS:
                (staging / area).mkdir(mode=0o700)
            env = dict(spec.env)
            env.update(
                CLAUDE_CONFIG_DIR=str(final / "config"),
                CLAUDE_CODE_TMPDIR=str(final / "tmp"),
                TMPDIR=str(final / "tmp"),
                HOME=str(final / "home"),
            )
            record = {"version": 1, "session_id": spec.session_id, "env": env}
            fd = os.open(
                staging / _SANDBOX_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.rename(staging, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove_tree(staging)
            raise Unavailable(f"cannot create a sandbox under {self._root}: {exc}") from exc
        return self._info(sandbox_id)

    async def describe(self, sandbox_id: str) -> SandboxInfo:
        """``NotFound`` once destroyed (or for an id that was never made)."""
        await asyncio.to_thread(self._load_env, sandbox_id)
        return self._info(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox, whichever replica started it,
        then delete the directory. Idempotent; never follows symlinks the
        agent left; read-only files and directories do not stop it."""
        if not _ID_RE.match(sandbox_id):
            return
        if await asyncio.to_thread(self._destroy_sync, sandbox_id):
            log.info("sandbox destroyed: %s", sandbox_id)

    def _destroy_sync(self, sandbox_id: str) -> bool:
        source = self._root / sandbox_id
        trash = self._root / _TRASH
        target = trash / f"{sandbox_id}-{secrets.token_hex(4)}"
        try:
            trash.mkdir(mode=0o700, exist_ok=True)
            # The commit point: from here every replica sees NotFound, and an
            # exec racing with us notices (it re-checks after recording its
            # process group) and kills what it started.
            os.rename(source, target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise Unavailable(f"cannot destroy sandbox {sandbox_id}: {exc}") from exc
        _kill_sandbox(sandbox_id, _read_pgids(target), (str(source), str(target)))
        try:
            _remove_tree(target)
        except OSError as exc:
            # Already invisible to every caller; only disk space is left behind.
            log.warning("sandbox %s: could not remove %s: %s", sandbox_id, target, exc)
        return True

    async def kill_all(self, sandbox_id: str) -> None:
        """SIGKILL every process of the sandbox (whichever replica started
        it), keeping the files. ``NotFound`` if the sandbox is gone."""
        self._check_id(sandbox_id)
        await asyncio.to_thread(self._kill_all_sync, sandbox_id)
        log.info("sandbox %s: killed all commands", sandbox_id)

    def _kill_all_sync(self, sandbox_id: str) -> None:
        sandbox_dir = self._root / sandbox_id
        if not (sandbox_dir / _SANDBOX_FILE).exists():
            raise NotFound(f"sandbox {sandbox_id} not found")
        _kill_sandbox(sandbox_id, _read_pgids(sandbox_dir), (str(sandbox_dir),))

    async def close(self) -> None:
        """Nothing to release; sandboxes and running commands stay."""

    # -- commands ------------------------------------------------------------

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> LocalExecution | FailedExecution:
        """Start ``argv`` in its own session and process group. ``cwd`` must
        be a directory inside the sandbox (``InvalidArgument`` otherwise). A
        command that cannot be started reports 127 (not found) or 126 (not
        executable) with a message on stderr."""
        if not argv or any(not isinstance(a, str) or "\0" in a for a in argv):
            raise InvalidArgument("argv must be a non-empty list of strings without NUL")
        _check_env(env or {}, "env")
        sandbox_env = await asyncio.to_thread(self._load_env, sandbox_id)
        sandbox_dir = self._root / sandbox_id
        run_dir = str(sandbox_dir / "work")
        if cwd is not None:
            run_dir = await asyncio.to_thread(self._check_cwd, sandbox_id, cwd)
        exec_id = secrets.token_hex(8)
        full_env = {**self._base_env, **sandbox_env, **(env or {})}
        full_env[MARK_SANDBOX] = sandbox_id
        full_env[MARK_EXEC] = exec_id

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *_with_rlimits(self._python, self._rlimits, argv),
                stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
                stdout=out_w,
                stderr=err_w,
                cwd=run_dir,
                env=full_env,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException as exc:
            os.close(out_r)
            os.close(err_r)
            if isinstance(exc, OSError) and exc.filename != run_dir:
                return _start_failure(argv[0], exc)
            if isinstance(exc, OSError):
                raise NotFound(f"sandbox {sandbox_id}: cwd vanished") from exc
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        # proc.pid leads its own session, so it is also the process group id.
        try:
            await asyncio.to_thread(_record_pgid, sandbox_dir, proc.pid)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            await _abandon(proc)
            raise
        try:
            return await LocalExecution.start(proc, out_r, err_r, exec_id=exec_id, stdin=stdin)
        except BaseException:
            await _abandon(proc)
            raise

    def _check_cwd(self, sandbox_id: str, cwd: str) -> str:
        parts = self._inner_parts(sandbox_id, cwd)
        path = os.path.join(self._root, sandbox_id, *parts)
        real = os.path.realpath(path)
        if not _within(real, str(self._root / sandbox_id)):
            raise InvalidArgument(f"cwd {cwd!r} leads outside the sandbox")
        if not os.path.isdir(real):
            raise InvalidArgument(f"cwd {cwd!r} is not a directory in the sandbox")
        return real

    # -- files ---------------------------------------------------------------

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` at ``path`` (absolute, inside the sandbox's work,
        config, tmp or home; no ``..``; no symlink anywhere on the way, not
        even one pointing inside — ``InvalidArgument``). Parents are created;
        the file is replaced atomically. ``mode`` ≤ 0o777."""
        if not 0 <= mode <= 0o777:
            raise InvalidArgument(f"mode {mode:#o} is not a permission mode (0..0o777)")
        self._check_id(sandbox_id)
        await asyncio.to_thread(self._put_sync, sandbox_id, path, bytes(data), mode)

    def _put_sync(self, sandbox_id: str, path: str, data: bytes, mode: int) -> None:
        parts = self._inner_parts(sandbox_id, path)
        if len(parts) < 2:
            raise InvalidArgument(f"{path!r} is a sandbox directory, not a file")
        dfd = self._open_dir(sandbox_id, parts[:-1], path, create=True)
        name = parts[-1]
        tmp = f".{name[:200]}.sessiond-{secrets.token_hex(4)}"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    os.fchmod(f.fileno(), mode)
                # rename replaces a file or a symlink at `name`; it never follows it.
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        except IsADirectoryError as exc:
            raise InvalidArgument(f"{path!r} is a directory") from exc
        except OSError as exc:
            raise _fs_error(exc, path) from exc
        finally:
            os.close(dfd)

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        """The content of the regular file at ``path`` (rules as for
        :meth:`put_file`). ``NotFound`` if it or the sandbox does not exist;
        ``InvalidArgument`` for a directory, FIFO, device or symlink."""
        self._check_id(sandbox_id)
        return await asyncio.to_thread(self._get_sync, sandbox_id, path)

    def _get_sync(self, sandbox_id: str, path: str) -> bytes:
        parts = self._inner_parts(sandbox_id, path)
        if len(parts) < 2:
            raise InvalidArgument(f"{path!r} is a sandbox directory, not a file")
        dfd = self._open_dir(sandbox_id, parts[:-1], path, create=False)
        try:
            # O_NONBLOCK: a FIFO planted by the agent must not hang us.
            fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as exc:
            raise _fs_error(exc, path) from exc
        finally:
            os.close(dfd)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        if not regular:
            os.close(fd)
            raise InvalidArgument(f"{path!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _open_dir(self, sandbox_id: str, parts: list[str], path: str, *, create: bool) -> int:
        """An fd for the directory ``sandbox/parts``, walked one component at
        a time with O_NOFOLLOW (so no symlink is ever followed)."""
        try:
            fd = os.open(self._root / sandbox_id, _DIR_FLAGS)
        except FileNotFoundError as exc:
            raise NotFound(f"sandbox {sandbox_id} not found") from exc
        try:
            for name in parts:
                try:
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                            raise InvalidArgument(f"{path!r} goes through a symlink") from exc
                    raise
                os.close(fd)
                fd = next_fd
        except InvalidArgument:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, NotADirectoryError) and not create:
                raise NotFound(f"{path!r} not found in sandbox {sandbox_id}") from exc
            raise _fs_error(exc, path) from exc
        return fd

    # -- helpers -------------------------------------------------------------

    def _check_id(self, sandbox_id: str) -> None:
        if not _ID_RE.match(sandbox_id):
            raise NotFound(f"sandbox {sandbox_id!r} not found")

    def _inner_parts(self, sandbox_id: str, path: str) -> list[str]:
        """``path``'s components below the sandbox directory, checked to be
        absolute, ``..``-free and inside one of the sandbox areas."""
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise InvalidArgument(f"path {path!r} must be absolute")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InvalidArgument(f"path {path!r} must not contain '..'")
        base = (self._root / sandbox_id).parts[1:]
        inner = parts[len(base) :]
        if tuple(parts[: len(base)]) != base or not inner or inner[0] not in _AREAS:
            # A missing sandbox is the better answer than a bad path.
            if not (self._root / sandbox_id / _SANDBOX_FILE).exists():
                raise NotFound(f"sandbox {sandbox_id} not found")
            raise InvalidArgument(f"path {path!r} is outside sandbox {sandbox_id}")
        return inner

    def _load_env(self, sandbox_id: str) -> dict[str, str]:
        self._check_id(sandbox_id)
        try:
            with open(self._root / sandbox_id / _SANDBOX_FILE, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError as exc:
            raise NotFound(f"sandbox {sandbox_id} not found") from exc
        except (OSError, ValueError) as exc:
            raise Unavailable(f"sandbox {sandbox_id}: unreadable {_SANDBOX_FILE}") from exc
        env = record.get("env")
        if not isinstance(env, dict):
            raise Unavailable(f"sandbox {sandbox_id}: malformed {_SANDBOX_FILE}")
        return {str(k): str(v) for k, v in env.items()}

    def _info(self, sandbox_id: str) -> SandboxInfo:
        base = self._root / sandbox_id
        return SandboxInfo(
            sandbox_id=sandbox_id,
            provider=self.name,
            workdir=str(base / "work"),
            config_dir=str(base / "config"),
        )


# -- executions ----------------------------------------------------------------


class LocalExecution:
    """A command started by :class:`LocalSandboxProvider`: stdout and stderr
    are read from two pipes and delivered through one bounded queue in
    arrival order. One consumer of :meth:`events`."""

    def __init__(
        self, proc: asyncio.subprocess.Process, exec_id: str, grace: float = DRAIN_GRACE
    ) -> None:
        self._proc = proc
        self._exec_id = exec_id
        self._grace = grace
        self._queue: asyncio.Queue[ExecEvent | None] = asyncio.Queue(_QUEUE_DEPTH)
        self._exit: asyncio.Task[int] = asyncio.ensure_future(proc.wait())
        self._tasks: list[asyncio.Task[None]] = []
        self._finished = False

    @classmethod
    async def start(
        cls,
        proc: asyncio.subprocess.Process,
        out_fd: int,
        err_fd: int,
        *,
        exec_id: str,
        stdin: bytes | None,
        grace: float = DRAIN_GRACE,
    ) -> LocalExecution:
        """Take over ``proc`` and the read ends of its output pipes."""
        self = cls(proc, exec_id, grace)
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        pumps: list[asyncio.Task[None]] = []
        pipes: tuple[tuple[Stream, int], ...] = (("stdout", out_fd), ("stderr", err_fd))
        for stream, fd in pipes:
            reader = asyncio.StreamReader(limit=_CHUNK, loop=loop)
            transport, _ = await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, reader),
                os.fdopen(fd, "rb", buffering=0),
            )
            transports.append(transport)
            pumps.append(asyncio.create_task(self._pump(reader, stream)))
        self._tasks = [*pumps, asyncio.create_task(self._finish(pumps, transports))]
        if stdin is not None:
            self._tasks.append(asyncio.create_task(self._feed(stdin)))
        return self

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        while True:
            read = asyncio.ensure_future(reader.read(_CHUNK))
            try:
                if not self._exit.done():
                    await asyncio.wait((read, self._exit), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    # The command has exited but a descendant holds the pipe:
                    # it is over once the pipe stays quiet for the grace period.
                    await asyncio.wait((read,), timeout=self._grace)
                    if not read.done():
                        read.cancel()
                        return
                data = read.result()
            except BaseException:
                read.cancel()
                raise
            if not data:
                return
            await self._queue.put(ExecEvent(stream, data))

    async def _finish(
        self, pumps: list[asyncio.Task[None]], transports: list[asyncio.BaseTransport]
    ) -> None:
        try:
            await asyncio.gather(*pumps)
        finally:
            for transport in transports:
                transport.close()
            await self._queue.put(None)

    async def _feed(self, data: bytes) -> None:
        writer = self._proc.stdin
        if writer is None:
            return
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command did not read all of it; that is its business
        finally:
            writer.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await writer.wait_closed()

    async def events(self) -> AsyncIterator[ExecEvent]:
        """Output in arrival order (in order per stream); ends once the
        command has exited and its pipes are drained."""
        while not self._finished:
            item = await self._queue.get()
            if item is None:
                self._finished = True
                return
            yield item

    async def wait(self) -> int:
        """The exit code; 128 + N if the command died of signal N."""
        code = await asyncio.shield(self._exit)
        return code if code >= 0 else 128 - code

    async def kill(self) -> None:
        """SIGKILL the command's process group and every process carrying
        this execution's marker. Idempotent."""
        pgid = self._proc.pid
        if self._proc.returncode is None:
            # Not reaped yet: the pid (= pgid) cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        marker = f"{MARK_EXEC}={self._exec_id}".encode()
        await asyncio.to_thread(_kill_marked, pgid, marker)


class FailedExecution:
    """A command that could not be started: one stderr message, then the
    shell's exit code for it (127 not found, 126 not executable)."""

    def __init__(self, code: int, message: str) -> None:
        self._code = code
        self._message = message.encode()

    async def events(self) -> AsyncIterator[ExecEvent]:
        yield ExecEvent("stderr", self._message)

    async def wait(self) -> int:
        return self._code

    async def kill(self) -> None:
        return None


def _start_failure(command: str, exc: OSError) -> FailedExecution:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return FailedExecution(127, f"sessiond: {command}: command not found\n")
    return FailedExecution(126, f"sessiond: {command}: cannot execute: {exc.strerror}\n")


# -- processes -----------------------------------------------------------------


async def _abandon(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _rlimit_settings(limits: LocalLimits) -> list[tuple[int, tuple[int, int]]]:
    wanted: list[tuple[int, int]] = [(resource.RLIMIT_CORE, 0)]
    if limits.nofile is not None:
        wanted.append((resource.RLIMIT_NOFILE, limits.nofile))
    if limits.fsize is not None:
        wanted.append((resource.RLIMIT_FSIZE, limits.fsize))
    if limits.cpu_seconds is not None:
        wanted.append((resource.RLIMIT_CPU, limits.cpu_seconds))
    settings = []
    for which, value in wanted:
        if value < 0:
            raise InvalidArgument(f"resource limit {value} must not be negative")
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        settings.append((which, (value, value)))
    return settings


# Resource limits are applied by a tiny exec wrapper rather than a
# preexec_fn: running Python code between fork and exec in a multi-threaded
# server (gRPC's threads) can deadlock or crash the child.
_RLIMIT_WRAPPER = """\
import os, resource, sys
for spec in sys.argv[1].split(","):
    which, soft, hard = (int(x) for x in spec.split(":"))
    resource.setrlimit(which, (soft, hard))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except FileNotFoundError as exc:
    sys.stderr.write(f"{sys.argv[2]}: command not found: {exc.strerror}\\n")
    sys.exit(127)
except OSError as exc:
    sys.stderr.write(f"{sys.argv[2]}: cannot execute: {exc.strerror}\\n")
    sys.exit(126)
"""


def _with_rlimits(
    python: str, settings: list[tuple[int, tuple[int, int]]], argv: Sequence[str]
) -> list[str]:
    if not settings:
        return list(argv)
    spec = ",".join(f"{which}:{soft}:{hard}" for which, (soft, hard) in settings)
    return [python, "-I", "-S", "-c", _RLIMIT_WRAPPER, spec, *argv]


def _record_pgid(sandbox_dir: Path, pgid: int) -> None:
    """Append ``pgid`` to the sandbox's list, then make sure the sandbox
    still exists: a destroy renames the directory before it reads the list,
    so either it sees our line or we see that it is gone."""
    try:
        fd = os.open(
            sandbox_dir / _PGIDS_FILE,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, f"{pgid}\n".encode())
        finally:
            os.close(fd)
        os.stat(sandbox_dir / _SANDBOX_FILE)
    except FileNotFoundError as exc:
        raise NotFound(f"sandbox {sandbox_dir.name} was destroyed") from exc


def _read_pgids(sandbox_dir: Path) -> set[int]:
    try:
        text = (sandbox_dir / _PGIDS_FILE).read_text()
    except OSError:
        return set()
    return {int(line) for line in text.split() if line.isdigit() and int(line) > 1}


def _pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _cwd_within(pid: int, dirs: Sequence[str]) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return any(_within(cwd, d) for d in dirs)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _kill_marked(pgid: int, marker: bytes) -> None:
    """SIGKILL the group ``pgid`` if it is still ours, and every process
    whose environment carries ``marker``."""
    me = os.getpid()
    if pgid != os.getpgrp() and (not os.path.exists(f"/proc/{pgid}") or _has_marker(pgid, marker)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in _pids():
        if pid != me and _has_marker(pid, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _kill_sandbox(sandbox_id: str, pgids: set[int], dirs: Sequence[str]) -> None:
    """SIGKILL everything belonging to the sandbox until nothing is left:
    its recorded process groups (unless the pid now belongs to a stranger)
    and every process with its marker or a cwd inside it."""
    marker = f"{MARK_SANDBOX}={sandbox_id}".encode()
    me, my_group = os.getpid(), os.getpgrp()

    def ours(pid: int) -> bool:
        return _has_marker(pid, marker) or _cwd_within(pid, dirs)

    for _ in range(_KILL_ROUNDS):
        for pgid in pgids - {my_group}:
            # A leader that is gone cannot have been reused while its group
            # has members; a live one must prove it is ours.
            if not os.path.exists(f"/proc/{pgid}") or ours(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        found = 0
        for pid in _pids():
            if pid != me and ours(pid):
                found += 1
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if not found:
            return
    log.warning("sandbox %s: processes still appearing after %d rounds", sandbox_id, _KILL_ROUNDS)


# -- files ---------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    """``rmtree`` (fd-based: never follows symlinks); if the agent made
    something unwritable, make the directories writable and retry."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        make_removable(path)
        shutil.rmtree(path)


def make_removable(path: Path) -> None:
    """Give the owner rwx on every directory below ``path`` (and ``path``),
    never following symlinks, so that the tree can be deleted."""
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chmod(path, stat.S_IRWXU)
    for top, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = os.path.join(top, name)
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(child).st_mode):
                    os.chmod(child, stat.S_IRWXU)


def _fs_error(exc: OSError, path: str) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{path!r} not found")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return InvalidArgument(f"{path!r} goes through a symlink or a non-directory")
    if isinstance(exc, PermissionError):
        return InvalidArgument(f"{path!r}: permission denied")
    return Unavailable(f"{path!r}: {exc.strerror}")


def _check_env(env: Mapping[str, str], what: str) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise InvalidArgument(f"{what}: invalid variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            # The value may be a credential: name the variable only.
            raise InvalidArgument(f"{what}: value of {key} must be a string without NUL")
