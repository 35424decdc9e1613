"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")


async def assert_eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Await ``check`` until it returns without AssertionError (returning its
    value) or ``timeout`` passes (re-raising the last failure)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


def health_status(target: str, timeout: float = 2.0) -> str:
    """The server's overall health status name, or the gRPC error code name."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"error:{exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def wait_serving(
    target: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"server exited with {proc.returncode}: {out[-2000:]}")
        status = health_status(target, timeout=1.0)
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise AssertionError(f"server at {target} not SERVING after {timeout}s (last: {status})")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any SESSIOND_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env.update(extra)
    return env


def sessiond_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sessiond.server", *args]


def spawn_server(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        sessiond_cmd("serve", *args),
        cwd=cwd,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
