-- Secrets every server replica must share (e.g. the HMAC key of sandbox
-- tokens). Created on first use by whichever replica gets there first.
CREATE TABLE server_keys (
    name       text COLLATE "C" PRIMARY KEY,
    key        bytea NOT NULL CHECK (octet_length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
