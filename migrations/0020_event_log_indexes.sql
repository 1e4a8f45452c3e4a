-- Lighter writes for the event log (#18): every conversion and every ledger move writes an event,
-- and a delivery per endpoint.
-- * Expiring old events reads them by creation time, which grows with the log: a BRIN index
--   (a few pages, next to nothing to maintain per insert) finds them as well as a B-tree.
-- * webhook_deliveries (endpoint_id, event_seq) had two identical B-trees: the UNIQUE
--   constraint's and a second one; the constraint's serves every lookup.
DROP INDEX IF EXISTS events_created_idx;
CREATE INDEX IF NOT EXISTS events_created_brin ON events USING brin (created_at);
DROP INDEX IF EXISTS webhook_deliveries_endpoint_idx;
