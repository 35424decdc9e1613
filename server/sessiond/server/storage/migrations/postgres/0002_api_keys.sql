-- Tenant API keys. Only SHA-256 of the secret is stored; the key id is the
-- lookup handle (the token is ssd_<key_id>_<secret>).
CREATE TABLE api_keys (
    key_id      text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);
