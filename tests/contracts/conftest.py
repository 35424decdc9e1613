"""The backends every metadata contract suite runs against: adding a backend
is adding one fixture here and one name to ``METADATA_BACKENDS``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.server.storage.metadata import MetadataStore
from sessiond.server.storage.metadata_url import open_metadata_store

METADATA_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
async def sqlite_metadata_store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    store = await open_metadata_store(f"sqlite:///{tmp_path}/meta.db")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def postgres_metadata_store(postgres_url: str) -> AsyncIterator[MetadataStore]:
    store = await open_metadata_store(postgres_url, pool_max_size=12)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=METADATA_BACKENDS)
def metadata_store(request: pytest.FixtureRequest) -> MetadataStore:
    store: MetadataStore = request.getfixturevalue(f"{request.param}_metadata_store")
    return store
