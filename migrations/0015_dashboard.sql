-- The merchant dashboard's sessions (#19): a session is a random token stored as its hash, tied
-- to the API key that signed in (revoking the key ends them), ending after 12 hours or at
-- sign-out.
CREATE TABLE dashboard_sessions (
    token_hash  bytea PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz
);
CREATE INDEX dashboard_sessions_expiry_idx ON dashboard_sessions (expires_at);
