-- Several API keys per merchant, each with scopes, a last-used time and an optional expiry (a
-- rotated key stays valid for the overlap it was given). Keys issued before keep every scope.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{admin}';
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN rotated_to uuid REFERENCES api_keys (id);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['read', 'links:write', 'rewards:write', 'admin']::text[]
           AND cardinality(scopes) > 0);
CREATE INDEX api_keys_merchant_idx ON api_keys (merchant_id, created_at);
