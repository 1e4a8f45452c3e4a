-- Announcing many rows in one statement (#18). The conversions and the first ledger entries of a
-- group of conversions (app/services/grouped.py) are announced by the group itself, one
-- statement for each kind, just before it commits: a trigger per row costs a function call, a
-- read of the row, an insert of its event and a search for its endpoints, for each row. The
-- payloads are defined once, here: the row triggers announce their row through the same
-- functions.
--
-- A transaction that will announce its rows itself says so with the setting
-- `referral.announce` = 'by_statement' (set_config(..., true): until its end, or until set back to
-- ''), and the triggers' WHEN skips its rows. A constraint trigger's WHEN is evaluated when the
-- row is written, not at the commit, so a skipped row is not even queued.

-- A delivery row for each enabled endpoint of the merchant that wants this event type (as
-- `announce` chooses them, migration 0012).
CREATE FUNCTION endpoints_wanting(merchant uuid, event_type text, seq bigint)
RETURNS TABLE (merchant_id uuid, endpoint_id uuid, event_seq bigint)
LANGUAGE sql STABLE AS $$
    SELECT merchant, e.id, seq FROM webhook_endpoints e
    WHERE e.merchant_id = merchant AND e.enabled
      AND (e.event_types = '{}' OR event_type = ANY (e.event_types));
$$;

CREATE FUNCTION announce_conversions(ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH announced AS (
        INSERT INTO events (merchant_id, type, data)
        SELECT c.merchant_id, 'conversion.' || c.state, jsonb_build_object(
            'conversion_id', c.id, 'event_id', c.event_id, 'type', c.type,
            'order_id', c.order_id, 'customer_id', c.customer_id,
            'amount_minor', c.amount_minor, 'currency', trim(c.currency),
            'program_id', c.program_id, 'advocate_id', c.advocate_id,
            'attribution_method', c.attribution_method, 'reason', c.reason,
            'fraud_action', c.fraud_action, 'occurred_at', c.occurred_at)
        FROM unnest(ids) WITH ORDINALITY AS t(id, n)
        JOIN conversions c ON c.id = t.id
        WHERE c.type IN ('signup', 'purchase', 'renewal')
          AND c.state IN ('attributed', 'unattributed')
        ORDER BY t.n  -- events in the order given (seq is assigned as the rows are inserted)
        RETURNING seq, merchant_id, type)
    INSERT INTO webhook_deliveries (merchant_id, endpoint_id, event_seq)
    SELECT d.merchant_id, d.endpoint_id, d.event_seq FROM announced a,
    LATERAL endpoints_wanting(a.merchant_id, a.type, a.seq) AS d;
END;
$$;

CREATE FUNCTION announce_reward_entries(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        SELECT re.*, CASE
            WHEN re.from_state IS NULL THEN 'reward.created'
            WHEN re.to_state = 'approved' AND re.from_state = 'pending' THEN 'reward.approved'
            WHEN re.to_state = 'paid' THEN 'reward.paid'
            WHEN re.to_state = 'reversed' THEN 'reward.reversed'
            WHEN re.to_state = 'rejected' THEN 'reward.rejected'
            WHEN re.to_state = 'held' THEN 'reward.held'
            WHEN re.to_state = 'pending' AND re.from_state = 'held' THEN 'reward.released'
        END AS event_type
        FROM reward_entries re WHERE re.id = ANY (ids)),
    announced AS (
        INSERT INTO events (merchant_id, type, data)
        SELECT m.merchant_id, m.event_type, jsonb_build_object(
            'reward_id', r.id, 'program_id', r.program_id, 'advocate_id', r.advocate_id,
            'conversion_id', r.conversion_id, 'beneficiary', r.beneficiary,
            'customer_id', r.customer_id, 'reward_amount_minor', r.amount_minor,
            'currency', trim(r.currency), 'from_state', m.from_state, 'to_state', m.to_state,
            'amount_minor', m.amount_minor, 'reason', m.reason, 'entry_id', m.id)
        FROM moved m JOIN rewards r ON r.id = m.reward_id
        WHERE m.event_type IS NOT NULL
        ORDER BY m.id  -- the ledger's order
        RETURNING seq, merchant_id, type)
    INSERT INTO webhook_deliveries (merchant_id, endpoint_id, event_seq)
    SELECT d.merchant_id, d.endpoint_id, d.event_seq FROM announced a,
    LATERAL endpoints_wanting(a.merchant_id, a.type, a.seq) AS d;
END;
$$;

-- The row triggers, through the same functions (still deferred to the commit: the row is
-- announced as it was committed, in the order the rows were written).
CREATE OR REPLACE FUNCTION announce_reward_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_reward_entries(ARRAY[NEW.id]);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION announce_conversion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_conversions(ARRAY[NEW.id]);
    RETURN NULL;
END;
$$;

DROP TRIGGER reward_entries_announce ON reward_entries;
CREATE CONSTRAINT TRIGGER reward_entries_announce AFTER INSERT ON reward_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (current_setting('referral.announce', true) IS DISTINCT FROM 'by_statement')
    EXECUTE FUNCTION announce_reward_entry();

DROP TRIGGER conversions_announce ON conversions;
CREATE CONSTRAINT TRIGGER conversions_announce AFTER INSERT ON conversions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (current_setting('referral.announce', true) IS DISTINCT FROM 'by_statement')
    EXECUTE FUNCTION announce_conversion();
