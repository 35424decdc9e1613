-- sessiond metadata schema, version 4: session leases and the project key.
--
-- A lease is (lease_owner, lease_expires_at) on the session row, judged on
-- the DATABASE clock (now()) so replicas with skewed clocks agree on who
-- holds what. It is free when lease_owner IS NULL or lease_expires_at <=
-- now(). Every change of owner bumps the session's fencing epoch (the
-- column from 0001), which is what fenced writes check; a released or
-- ended lease keeps lease_expires_at as the time it ended and clears
-- lease_owner, so the next holder, whoever it is, bumps the epoch.
--
-- Adding nullable columns without a default rewrites nothing; the index
-- builds block writes to sessions for the (short) duration of the build.

ALTER TABLE sessions
    -- Project key the session's transcript is stored under (that of the cwd
    -- it last ran in); NULL before the first turn.
    ADD COLUMN project_key      text COLLATE "C",
    ADD COLUMN lease_owner      text COLLATE "C",
    ADD COLUMN lease_expires_at timestamptz,
    -- An owner always has an expiry (the reverse need not hold: an ended
    -- lease keeps the time it ended).
    ADD CONSTRAINT sessions_lease_has_expiry
        CHECK (lease_owner IS NULL OR lease_expires_at IS NOT NULL);

-- claim_idle: ACTIVE sessions, least recently active first. Partial, so
-- the (many) suspended and deleted sessions cost the index nothing, and
-- sessions in use (recently touched) sit at its far end.
CREATE INDEX sessions_idle_idx ON sessions (last_active_at) WHERE state = 'active';

-- list_leased_by (a replica's shutdown): only leased rows are indexed.
-- lease_expires_at is deliberately not indexed, so renewals stay HOT updates.
CREATE INDEX sessions_lease_owner_idx ON sessions (lease_owner) WHERE lease_owner IS NOT NULL;
