"""pytest fixtures for the fake Messages API (load with ``pytest_plugins`` or import).

``fake_api``: a started :class:`FakeMessagesAPI`, stopped after the test.
``agent_env``: ``cli_env`` for it under the test's ``tmp_path/cli``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeapi.cli_env import cli_env
from tests.fakeapi.server import FakeMessagesAPI


@pytest.fixture
def fake_api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture
def agent_env(fake_api: FakeMessagesAPI, tmp_path: Path) -> dict[str, str]:
    return cli_env(fake_api.base_url, tmp_path / "cli")
