"""Shared fixtures. Real services: PostgreSQL (tests/fixtures/postgres.py) and
S3 via SeaweedFS (tests/fixtures/seaweedfs.py); each test gets its own schema
and its own bucket."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.seaweedfs",
    "tests.fakeapi.fixtures",
    "tests.fixtures.server",
    "tests.fixtures.e2b",
]
