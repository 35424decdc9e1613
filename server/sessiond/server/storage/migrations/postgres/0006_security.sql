-- Encryption at rest, tenant lifecycle, retention, quotas.
--
-- Each tenant has a data key (DEK) that seals its chunks, packs and
-- manifests (AEAD). Only the DEK wrapped by the server's master key is
-- stored; deleting a tenant first destroys wrapped_dek (crypto-shredding:
-- whatever objects remain are unreadable) and then its rows and objects.
ALTER TABLE tenants
    ADD COLUMN wrapped_dek bytea,
    -- Which master key wrapped it (for master-key rotation).
    ADD COLUMN dek_master_id text,
    ADD COLUMN deleted_at timestamptz,
    -- Retention: keep the newest N snapshots per session (NULL: all).
    ADD COLUMN keep_last_snapshots integer CHECK (keep_last_snapshots > 0),
    -- Retention: delete sessions suspended longer than this (NULL: never).
    ADD COLUMN expire_suspended_days integer CHECK (expire_suspended_days > 0),
    -- Quotas (NULL: unlimited).
    ADD COLUMN quota_bytes bigint CHECK (quota_bytes >= 0),
    ADD COLUMN quota_sessions integer CHECK (quota_sessions >= 0);

-- Stored bytes per tenant, and bytes reserved by uploads in flight. An
-- upload reserves its size first (refused when used + reserved would pass
-- the quota), then converts the reservation into use when its pack is
-- indexed, or releases it on failure.
CREATE TABLE tenant_usage (
    tenant_id      text COLLATE "C" PRIMARY KEY REFERENCES tenants (tenant_id),
    stored_bytes   bigint NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    reserved_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0)
);

-- Idempotency keys of mutating RPCs: the same key replays the first
-- response; the same key with a different request is refused.
CREATE TABLE idempotency_keys (
    tenant_id    text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    method       text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    request_hash bytea NOT NULL,
    -- NULL while the first call is still running.
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, method, key)
);
CREATE INDEX idempotency_keys_age_idx ON idempotency_keys (created_at);
