"""LocalSandboxProvider: directory layout, environment, resource limits."""

from __future__ import annotations

import json
import os
import resource
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument
from sessiond.server.sandboxes.local import (
    MARK_EXEC,
    MARK_SANDBOX,
    LocalLimits,
    LocalSandboxProvider,
)
from sessiond.server.sandboxes.provider import SandboxProvider, SandboxSpec, run

ENV_JSON = "import json, os; print(json.dumps(dict(os.environ)))"


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(tmp_path / "root")
    yield p
    await p.close()


def test_is_a_sandbox_provider(tmp_path: Path) -> None:
    assert isinstance(LocalSandboxProvider(tmp_path), SandboxProvider)


async def test_every_sandbox_gets_a_new_path(provider: LocalSandboxProvider) -> None:
    infos = [await provider.create(SandboxSpec("ses")) for _ in range(3)]
    assert len({i.workdir for i in infos}) == 3
    assert len({i.config_dir for i in infos}) == 3
    first = infos[0]
    await provider.destroy(first.sandbox_id)
    again = await provider.create(SandboxSpec("ses"))
    assert again.workdir not in {i.workdir for i in infos}


async def test_layout_and_permissions(provider: LocalSandboxProvider) -> None:
    info = await provider.create(SandboxSpec("ses", env={"TOKEN": "t0ken"}))
    base = provider.root / info.sandbox_id
    assert info.workdir == str(base / "work") and info.config_dir == str(base / "config")
    assert sorted(os.listdir(base)) == ["config", "home", "sandbox.json", "tmp", "work"]
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    record = base / "sandbox.json"
    # The env holds credentials: owner-only.
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["env"]["TOKEN"] == "t0ken"
    assert sorted(os.listdir(provider.root)) == [".staging", info.sandbox_id]
    assert os.listdir(provider.root / ".staging") == []


async def test_dirs_and_minimal_env(provider: LocalSandboxProvider) -> None:
    info = await provider.create(SandboxSpec("ses", env={"HOME": "/spec-cannot-move-home"}))
    base = provider.root / info.sandbox_id
    code, out, err = await run(provider, info.sandbox_id, ["python3", "-c", ENV_JSON])
    assert code == 0, err
    env = json.loads(out)
    assert env["CLAUDE_CONFIG_DIR"] == info.config_dir
    assert env["CLAUDE_CODE_TMPDIR"] == env["TMPDIR"] == str(base / "tmp")
    assert env["HOME"] == str(base / "home")
    assert env[MARK_SANDBOX] == info.sandbox_id
    assert len(env[MARK_EXEC]) == 16
    # Nothing of the server's environment but what the base env names.
    expected = {"PATH", "LANG", "CLAUDE_CONFIG_DIR", "CLAUDE_CODE_TMPDIR", "TMPDIR", "HOME"}
    expected |= {MARK_SANDBOX, MARK_EXEC}
    # The interpreter may add a few of its own (e.g. LC_CTYPE coercion).
    assert set(env) - expected <= {"LC_CTYPE", "PWD"}
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


async def test_python_is_the_configured_interpreter(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(tmp_path / "root", python=sys.executable)
    info = await provider.create(SandboxSpec("ses"))
    code, out, _ = await run(
        provider, info.sandbox_id, ["python3", "-c", "import sys; print(sys.prefix)"]
    )
    assert (code, out.decode().strip()) == (0, sys.prefix)


async def test_base_env_replaces_the_default(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(
        tmp_path / "root", base_env={"PATH": "/usr/bin:/bin", "LANG": "C", "SITE": "x"}
    )
    info = await provider.create(SandboxSpec("ses"))
    code, out, _ = await run(provider, info.sandbox_id, ["python3", "-c", ENV_JSON])
    env = json.loads(out)
    assert (code, env["SITE"], env["LANG"]) == (0, "x", "C")
    assert env["PATH"] == os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin:/bin"])


async def test_bad_env_is_invalid(provider: LocalSandboxProvider) -> None:
    for env in ({"A=B": "x"}, {"": "x"}, {"A": "x\0y"}):
        with pytest.raises(InvalidArgument):
            await provider.create(SandboxSpec("ses", env=env))
    info = await provider.create(SandboxSpec("ses"))
    with pytest.raises(InvalidArgument) as caught:
        await provider.exec(info.sandbox_id, ["true"], env={"SECRET": "hunter2\0"})
    assert "hunter2" not in str(caught.value)  # values may be credentials


LIMITS = """
import json, resource
print(json.dumps({name: resource.getrlimit(getattr(resource, name))
                  for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CPU")}))
"""


async def test_resource_limits(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(
        tmp_path / "root", limits=LocalLimits(nofile=256, fsize=1 << 20, cpu_seconds=600)
    )
    info = await provider.create(SandboxSpec("ses"))
    code, out, err = await run(provider, info.sandbox_id, ["python3", "-c", LIMITS])
    assert code == 0, err
    limits = json.loads(out)
    assert limits["RLIMIT_CORE"] == [0, 0]
    assert limits["RLIMIT_NOFILE"] == [256, 256]
    assert limits["RLIMIT_FSIZE"] == [1 << 20, 1 << 20]
    assert limits["RLIMIT_CPU"] == [600, 600]
    # RLIMIT_FSIZE is enforced: a write past it fails (SIGXFSZ ignored → EFBIG).
    code, _, err = await run(
        provider,
        info.sandbox_id,
        [
            "python3",
            "-c",
            "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
            "open('big', 'wb').write(b'x' * (2 << 20))",
        ],
    )
    assert code != 0 and b"File too large" in err


async def test_default_limits(provider: LocalSandboxProvider) -> None:
    info = await provider.create(SandboxSpec("ses"))
    code, out, err = await run(provider, info.sandbox_id, ["python3", "-c", LIMITS])
    assert code == 0, err
    limits = json.loads(out)
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limits["RLIMIT_CORE"] == [0, 0]
    assert limits["RLIMIT_NOFILE"][0] == min(4096, hard_nofile)
    assert limits["RLIMIT_FSIZE"] == list(resource.getrlimit(resource.RLIMIT_FSIZE))
