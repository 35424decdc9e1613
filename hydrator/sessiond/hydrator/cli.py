"""``sessiond-hydrator``: snapshot, restore and watch a session's workspace.

Configuration is parsed here only (flags, then ``SESSIOND_*`` and
``CLAUDE_CONFIG_DIR`` environment variables); the commands take explicit
arguments. Errors print one line ``sessiond-hydrator: error: …`` and exit 2
for bad input, 1 otherwise. The token is never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sessiond.api.v1 import common_pb2
from sessiond.client import AsyncClient
from sessiond.client.errors import InvalidArgument, SessiondError

from . import faults
from .progress import Progress, make_progress
from .projectkey import Background
from .remote import WorkspaceRemote

PROG = "sessiond-hydrator"
EXIT_ERROR = 1
EXIT_USAGE = 2

_TRIGGERS = {
    "manual": common_pb2.SNAPSHOT_TRIGGER_MANUAL,
    "idle": common_pb2.SNAPSHOT_TRIGGER_IDLE,
    "turn": common_pb2.SNAPSHOT_TRIGGER_TURN,
    "shutdown": common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(message, EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    common = _Parser(add_help=False)
    g = common.add_argument_group("connection and workspace")
    g.add_argument(
        "--server", default=env.get("SESSIOND_SERVER"), help="host:port ($SESSIOND_SERVER)"
    )
    g.add_argument(
        "--token", default=env.get("SESSIOND_TOKEN"), help="API or sandbox token ($SESSIOND_TOKEN)"
    )
    g.add_argument("--tls", action="store_true", help="use TLS to reach the server")
    g.add_argument(
        "--session", default=env.get("SESSIOND_SESSION"), help="session id ($SESSIOND_SESSION)"
    )
    g.add_argument("--cwd", type=Path, default=Path("."), help="working directory (default: .)")
    g.add_argument(
        "--config-dir",
        type=Path,
        default=_default_config_dir(),
        help="Claude config dir ($CLAUDE_CONFIG_DIR, else ~/.claude)",
    )
    g.add_argument(
        "--state-dir", type=Path, default=None, help="hydrator state (default: <cwd>/.sessiond)"
    )
    g.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave paths matching GLOB out (repeatable)",
    )
    g.add_argument("--progress", choices=("auto", "json", "none"), default="auto")
    g.add_argument(
        "--include-transcript",
        action="store_true",
        help="carry the transcript in the snapshot (when it is not mirrored to sessiond)",
    )
    g.add_argument("-v", "--verbose", action="count", default=0)

    parser = _Parser(prog=PROG, description="Snapshot and restore a sessiond session's workspace.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    snap = sub.add_parser("snapshot", parents=[common], help="snapshot the working directory")
    snap.add_argument("--trigger", choices=sorted(_TRIGGERS), default="manual")
    snap.add_argument("--sdk-session", default=None, help="SDK session id (default: the server's)")
    snap.add_argument("--epoch", type=int, default=None, help="lease epoch held by the caller")
    snap.add_argument("--transcript-uuid", default=None, help="transcript position: last uuid")
    snap.add_argument("--transcript-seq", type=int, default=None, help="transcript position: seq")
    rest = sub.add_parser("restore", parents=[common], help="restore the latest (or a) snapshot")
    rest.add_argument("--snapshot", default=None, help="snapshot id (default: the latest)")
    rest.add_argument(
        "--project-key",
        default=None,
        help="the SDK's project key of --cwd as computed by the caller; used when --cwd is"
        " already a real path here (else the key is computed in the sandbox)",
    )
    rest.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="lease epoch the caller (the managing server) holds; default: take a new lease",
    )
    run = sub.add_parser("run", parents=[common], help="run one agent turn (prompt on stdin)")
    run.add_argument("--sdk-session-id", required=True, help="the SDK session id")
    run.add_argument("--resume", action="store_true", help="resume the SDK session")
    run.add_argument("--options", default="{}", help="agent options as a JSON object")
    run.add_argument(
        "--prompt-file",
        type=Path,
        default=None,
        help='wait for the prompt in this file ({"prompt": …}) instead of reading stdin',
    )
    w = sub.add_parser("watch", parents=[common], help="snapshot periodically until SIGTERM")
    w.add_argument("--interval", type=float, default=60.0, help="seconds between snapshots")
    w.add_argument("--no-inotify", action="store_true", help="walk the whole tree every time")
    return parser


def _default_config_dir() -> Path:
    env = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".claude"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.server:
        _fail("no server: pass --server or set SESSIOND_SERVER", EXIT_USAGE)
    if not args.session:
        _fail("no session: pass --session or set SESSIOND_SESSION", EXIT_USAGE)
    if args.command == "watch" and args.interval <= 0:
        _fail("--interval must be positive", EXIT_USAGE)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except InvalidArgument as exc:
        _fail(str(exc), EXIT_USAGE)
    except SessiondError as exc:
        _fail(f"{exc} ({exc.code.name})", EXIT_ERROR)
    except OSError as exc:
        _fail(str(exc), EXIT_ERROR)


async def _run(args: argparse.Namespace) -> int:
    progress = make_progress(args.progress)
    async with AsyncClient(args.server, token=args.token, tls=args.tls, timeout=None) as client:
        remote = faults.wrap(WorkspaceRemote(client, args.session))
        if args.command == "snapshot":
            return await _snapshot(remote, args, progress)
        if args.command == "restore":
            return await _restore(remote, args, progress)
        if args.command == "run":
            return await _run_turn(args)
        return await _watch(remote, args, progress)


async def _snapshot(remote: WorkspaceRemote, args: argparse.Namespace, progress: Progress) -> int:
    from .snapshot import snapshot

    snap = await snapshot(
        remote,
        args.cwd,
        state_dir=args.state_dir,
        config_dir=args.config_dir,
        trigger=_TRIGGERS[args.trigger],
        excludes=args.exclude,
        progress=progress,
        include_transcript=args.include_transcript,
        sdk_session_id=args.sdk_session,
        epoch=args.epoch,
        transcript_position=(
            (args.transcript_uuid or "", args.transcript_seq)
            if args.transcript_seq is not None
            else None
        ),
    )
    s = snap.stats
    _print(
        snapshot_id=snap.snapshot_id, manifest_id=snap.manifest_id, files=s.files, dirs=s.dirs,
        symlinks=s.symlinks, bytes=s.bytes, new_bytes=s.new_bytes,
        uploaded_bytes=s.uploaded_bytes, skipped=s.skipped,
        seconds=round(s.duration_seconds, 3),
    )  # fmt: skip
    return 0


async def _restore(remote: WorkspaceRemote, args: argparse.Namespace, progress: Progress) -> int:
    from . import projectkey

    # The key printed below comes from the SDK: the caller's, when it computed
    # it for this very path, else a child computes it meanwhile (importing
    # the SDK takes a second or more).
    real, given = await asyncio.to_thread(
        lambda: (os.path.realpath(args.cwd), os.path.abspath(args.cwd))
    )
    key_job = projectkey.Background(real, key=args.project_key if real == given else None)
    try:
        try:
            from .restore import restore
        except ImportError as exc:  # pragma: no cover - the restore side ships separately
            _fail(f"restore is not available in this build: {exc}", EXIT_ERROR)
        progress.start("restore")
        report = await restore(
            remote,
            args.cwd,
            state_dir=args.state_dir,
            config_dir=args.config_dir,
            snapshot_id=args.snapshot,
            progress=progress.bytes_done,
            epoch=args.epoch,
            project_key=key_job,
        )
        state_dir = args.state_dir or report.cwd / ".sessiond"
        key = await asyncio.to_thread(_project_key, report.cwd, state_dir, key_job)
    finally:
        key_job.close()
    progress.done(snapshot_id=report.snapshot_id, files=report.files, bytes=report.bytes)
    _print(
        snapshot_id=report.snapshot_id, files=report.files, dirs=report.dirs,
        symlinks=report.symlinks, bytes=report.bytes, skipped=report.skipped,
        lease_epoch=report.lease_epoch, seconds=round(report.seconds, 3),
        project_key=key,
    )  # fmt: skip
    return 0


async def _run_turn(args: argparse.Namespace) -> int:
    from .runner import run_turn, wait_for_prompt

    try:
        options = json.loads(args.options)
    except ValueError:
        _fail("--options must be a JSON object", EXIT_USAGE)
    if not isinstance(options, dict):
        _fail("--options must be a JSON object", EXIT_USAGE)
    # Import the SDK before waiting for the prompt: a managed server starts
    # this process while it restores the workspace, to overlap the two.
    import claude_agent_sdk  # noqa: F401

    if args.prompt_file is not None:
        prompt = await asyncio.to_thread(wait_for_prompt, args.prompt_file)
    else:
        prompt = await asyncio.to_thread(sys.stdin.read)
    ok = await run_turn(
        server=args.server,
        token=args.token,
        cwd=args.cwd.resolve(),
        prompt=prompt,
        sdk_session_id=args.sdk_session_id,
        resume=args.resume,
        options=options,
    )
    return 0 if ok else EXIT_ERROR


async def _watch(remote: WorkspaceRemote, args: argparse.Namespace, progress: Progress) -> int:
    from .watch import watch

    return await watch(
        remote,
        args.cwd,
        interval=args.interval,
        state_dir=args.state_dir,
        config_dir=args.config_dir,
        excludes=args.exclude,
        progress=progress,
        include_transcript=args.include_transcript,
        use_inotify=not args.no_inotify,
    )


def _project_key(cwd: Path, state_dir: Path, job: Background) -> str:
    """The SDK's project key of the restored working directory (the server
    re-keys the session's mirrored transcript to it); remembered in the
    state directory so that later snapshots need not ask the SDK."""
    from . import projectkey

    real = str(cwd.resolve())
    # The path may resolve differently once restored: then ask again.
    key = job.result() if job.directory == real else projectkey.compute(real)
    projectkey.remember(real, key, state_dir)
    return key


def _print(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()
