"""Sandbox provider tests: backend-specific behaviour (the shared contract is
``tests/contracts/test_sandbox_provider.py``). Helpers shared by both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sessiond.server.sandboxes.provider import Execution, SandboxProvider
from tests.fixtures.services import docker_engine_available, unavailable

ROOT = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "sessiond-sandbox"

# Prints the pid of a grandchild `sleep 1000`, then waits for it.
SPAWN_GRANDCHILD = (
    "import subprocess\n"
    "p = subprocess.Popen(['sleep', '1000'])\n"
    "print(p.pid, flush=True)\n"
    "p.wait()\n"
)

# argv[1] = a pid: prints "alive", or "gone" (no such process, or a zombie).
PROBE_PID = (
    "import sys\n"
    "try:\n"
    "    stat = open('/proc/%s/stat' % sys.argv[1]).read()\n"
    "except OSError:\n"
    "    print('gone'); sys.exit()\n"
    "print('gone' if stat.rsplit(')', 1)[1].split()[0] in 'ZX' else 'alive')\n"
)


async def collect(execution: Execution) -> tuple[int, bytes, bytes]:
    """Drain ``execution``: (exit code, stdout, stderr)."""
    out, err = bytearray(), bytearray()
    async for event in execution.events():
        (out if event.stream == "stdout" else err).extend(event.data)
    return await execution.wait(), bytes(out), bytes(err)


async def pid_state(provider: SandboxProvider, sandbox_id: str, pid: int) -> str:
    """ "alive" or "gone", as seen from inside the sandbox."""
    execution = await provider.exec(sandbox_id, ["python3", "-c", PROBE_PID, str(pid)])
    code, out, err = await collect(execution)
    assert code == 0, err
    return out.decode().strip()


def docker_sandbox_image() -> str:
    """The sandbox image on a running engine, built from the Dockerfile's
    ``sandbox`` target if missing. No engine → a plain skip (a machine
    without Docker is a normal configuration, not a missing service); an
    engine that cannot build the image → :func:`unavailable`."""
    reason = docker_engine_available()
    if reason is not None:
        pytest.skip(f"docker: {reason}")
    inspect = subprocess.run(
        ["docker", "image", "inspect", DOCKER_IMAGE], capture_output=True, timeout=60
    )
    if inspect.returncode != 0:
        build = subprocess.run(
            ["docker", "build", "--target", "sandbox", "-t", DOCKER_IMAGE, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if build.returncode != 0:
            unavailable(f"docker: cannot build {DOCKER_IMAGE}: {build.stderr[-2000:]}")
    return DOCKER_IMAGE
