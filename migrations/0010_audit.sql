-- The audit trail: every management write, with the API key that made it, when, the operation,
-- the objects its path names and the change asked for. Written in the same transaction as the
-- change (app/services/tx.py), so one is never without the other. Append-only.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    merchant_id uuid NOT NULL,
    key_id      uuid,
    at          timestamptz NOT NULL DEFAULT now(),
    operation   text NOT NULL,          -- e.g. 'PATCH /v1/links/{link_id}'
    object_ids  jsonb NOT NULL,         -- the path's ids, e.g. {"link_id": "…"}
    change      jsonb                   -- the request body (JSON), or its size and digest
);
CREATE INDEX audit_log_merchant_idx ON audit_log (merchant_id, id);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION reward_entries_are_append_only();
