"""Tenants' data keys: created on first use, stored only wrapped, cached
unwrapped in memory (see :mod:`.sealing` for the key hierarchy)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..storage.metadata import TenantTable
from .sealing import MasterKey, Sealer, new_dek

log = logging.getLogger(__name__)

# A DEK unwrapped here is forgotten after this long, so a tenant shredded by
# another process (``sessiond admin tenants rm``) stops being readable and
# writable by a running server within this bound, not at its next restart.
KEY_CACHE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    sealer: Sealer


class Keyring:
    """Per-tenant :class:`Sealer`\\ s.

    With ``encrypt`` a tenant without a data key gets one on first use
    (race-free across replicas: the first wrapped key stored wins and
    everyone uses it); without, none is created, but an existing one is
    still unwrapped (when a master key is given) so objects sealed earlier
    stay readable. ``encrypt`` needs a master key (``ValueError``).
    """

    def __init__(
        self,
        tenants: TenantTable,
        master: MasterKey | None,
        *,
        encrypt: bool,
        cache_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if encrypt and master is None:
            raise ValueError("encryption at rest needs a master key")
        self._tenants = tenants
        self.master = master
        self.encrypt = encrypt
        self._ttl = cache_seconds
        self._clock = clock
        self._cache: dict[str, _Entry] = {}

    async def sealer(self, tenant_id: str, *, refresh: bool = False) -> Sealer:
        """The tenant's sealer. ``NotFound`` if the tenant does not exist or
        is deleted (shredded); ``FailedPrecondition`` if its data key was
        wrapped by another master key; ``DataLoss`` if the wrapped key does
        not authenticate. ``refresh`` bypasses the cache."""
        now = self._clock()
        entry = self._cache.get(tenant_id)
        if entry is not None and not refresh and entry.expires > now:
            return entry.sealer
        wrapped, master_id = await self._tenants.data_key(tenant_id)
        if wrapped is None and self.encrypt:
            assert self.master is not None
            mine = self.master.wrap_dek(tenant_id, new_dek())
            wrapped, master_id = await self._tenants.set_data_key_if_absent(
                tenant_id, mine, self.master.key_id
            )
            if wrapped == mine:
                log.info("data key created tenant=%s master_key=%s", tenant_id, master_id)
        dek = None
        if wrapped is not None and self.master is not None:
            dek = self.master.unwrap_dek(tenant_id, wrapped, master_id or "")
        sealer = Sealer(dek, encrypt=self.encrypt)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[tenant_id] = _Entry(now + self._ttl, sealer)
        return sealer

    def forget(self, tenant_id: str) -> None:
        """Drop the cached key (after shredding the tenant in this process)."""
        self._cache.pop(tenant_id, None)
