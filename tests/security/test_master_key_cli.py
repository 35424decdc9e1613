"""``sessiond serve``'s master key as a user meets it: the embedded default
generated on first start, ``--master-key-file`` / ``$SESSIOND_MASTER_KEY``,
``--encryption off``, and one-line startup errors that name the flag and
never print key material."""

from __future__ import annotations

import signal
import stat
import subprocess
from pathlib import Path

import pytest

from sessiond.server.core.sealing import MasterKey
from tests.fixtures.services import free_port
from tests.helpers import clean_env, sessiond_cmd, spawn_server, wait_serving


def _serve_until_ready(cwd: Path, *args: str, **env: str) -> str:
    """Start, wait until serving, SIGTERM; return stderr (the log)."""
    target = f"127.0.0.1:{free_port()}"
    proc = spawn_server(["--listen", target, *args], cwd=cwd, env=clean_env(**env))
    try:
        wait_serving(target, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return proc.stderr.read().decode()


def _fails(cwd: Path, *args: str, **env: str) -> tuple[int, str]:
    proc = subprocess.run(
        sessiond_cmd("serve", "--listen", f"127.0.0.1:{free_port()}", *args),
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("sessiond: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_the_embedded_default_generates_a_private_key_once(tmp_path: Path) -> None:
    log = _serve_until_ready(tmp_path)
    key_file = tmp_path / ".sessiond" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = MasterKey.parse(key_file.read_text())
    assert f"generated master key {key.key_id}" in log
    assert f"encryption at rest: on, master key {key.key_id}" in log
    assert key_file.read_text().strip() not in log
    again = _serve_until_ready(tmp_path)
    assert "generated master key" not in again
    assert MasterKey.parse(key_file.read_text()).key == key.key


def test_encryption_off_needs_no_key(tmp_path: Path) -> None:
    log = _serve_until_ready(tmp_path, "--encryption", "off")
    assert "encryption at rest: off" in log
    assert not (tmp_path / ".sessiond" / "master.key").exists()


def test_a_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    key = MasterKey.generate()
    log = _serve_until_ready(tmp_path, SESSIOND_MASTER_KEY=key.key.hex())
    assert f"master key {key.key_id}" in log and key.key.hex() not in log
    assert not (tmp_path / ".sessiond" / "master.key").exists()
    path = tmp_path / "mk"
    path.write_text(key.encode())
    log = _serve_until_ready(tmp_path, "--master-key-file", str(path))
    assert f"master key {key.key_id}" in log


SECRET = "hunter2-not-a-key"


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--master-key-file", "/nonexistent/mk"], {}, "--master-key-file"),
        ([], {"SESSIOND_MASTER_KEY": SECRET}, "SESSIOND_MASTER_KEY"),
        ([], {"SESSIOND_MASTER_KEY_FILE": "/nonexistent/mk"}, "--master-key-file"),
        (["--master-key-file", "/x"], {"SESSIOND_MASTER_KEY": SECRET}, "both set"),
    ],
)
def test_a_bad_master_key_is_a_one_line_error_naming_the_flag(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    code, stderr = _fails(tmp_path, *args, **env)
    assert code == 2, stderr
    assert names in _one_error_line(stderr)
    assert SECRET not in stderr


def test_a_malformed_default_key_file_names_the_flag(tmp_path: Path) -> None:
    (tmp_path / ".sessiond").mkdir()
    (tmp_path / ".sessiond" / "master.key").write_text(SECRET)
    code, stderr = _fails(tmp_path)
    assert code == 2, stderr
    line = _one_error_line(stderr)
    assert "--master-key-file" in line and "master.key" in line
    assert SECRET not in stderr


def test_a_wrong_master_key_at_restart_refuses_to_start(tmp_path: Path) -> None:
    right, wrong = MasterKey.generate(), MasterKey.generate()
    _serve_until_ready(tmp_path, SESSIOND_MASTER_KEY=right.encode())
    code, stderr = _fails(tmp_path, SESSIOND_MASTER_KEY=wrong.encode())
    assert code == 1, stderr
    line = _one_error_line(stderr)
    assert "--master-key-file" in line and "wrong master key" in line
    assert right.key_id in line and wrong.key_id in line
    assert right.encode() not in stderr and wrong.encode() not in stderr
    _serve_until_ready(tmp_path, SESSIOND_MASTER_KEY=right.encode())
