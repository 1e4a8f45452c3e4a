-- Talking to merchants' systems (#17): the event log (feed and webhook outbox in one), webhook
-- endpoints, their deliveries and every attempt.

-- Every event we announce, in order (`seq` is the feed's cursor). Written in the transaction of
-- the change it announces, so an event exists exactly when its change committed.
CREATE TABLE events (
    seq         bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),  -- the webhook-id is 'msg_' || id
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_merchant_idx ON events (merchant_id, seq);
CREATE INDEX events_created_idx ON events (created_at);

CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id     uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    url             text NOT NULL,
    description     text NOT NULL DEFAULT '',
    event_types     text[] NOT NULL DEFAULT '{}',        -- empty: every type
    secret_enc      text NOT NULL,                       -- Fernet, under DATA_KEYS
    previous_secret_enc text,                            -- still signing until previous_until
    previous_until  timestamptz,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    failing_since   timestamptz,                         -- first failure since the last success
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, id)
);

-- One row per (event, endpoint): the outbox. `next_attempt_at` is also the lease: a worker that
-- claims a delivery moves it ahead by the lease, so a worker killed mid-send leaves it to be
-- claimed again when the lease runs out (at-least-once, the same webhook-id every time).
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id     uuid NOT NULL,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_seq       bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, event_seq);

-- The delivery log: every attempt, what came back.
CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    latency_ms       integer NOT NULL,
    response_excerpt text,
    error            text
);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, id);

-- Announce: the event, and a delivery for each enabled endpoint of the merchant that wants it.
-- One function, called by the services and by the ledger trigger below.
CREATE FUNCTION announce(merchant uuid, event_type text, payload jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_seq bigint;
BEGIN
    INSERT INTO events (merchant_id, type, data) VALUES (merchant, event_type, payload)
        RETURNING seq INTO new_seq;
    INSERT INTO webhook_deliveries (merchant_id, endpoint_id, event_seq)
        SELECT merchant, e.id, new_seq FROM webhook_endpoints e
        WHERE e.merchant_id = merchant AND e.enabled
          AND (e.event_types = '{}' OR event_type = ANY (e.event_types));
    RETURN new_seq;
END;
$$;

-- Every ledger move that a merchant's systems care about is announced by the ledger itself: a
-- path that writes entries (a postback, the scheduler's bulk approval, a payout, a review, a
-- refund) cannot forget to, and the event commits with the entry.
CREATE FUNCTION announce_reward_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_type text;
    r record;
BEGIN
    event_type := CASE
        WHEN NEW.from_state IS NULL THEN 'reward.created'
        WHEN NEW.to_state = 'approved' AND NEW.from_state = 'pending' THEN 'reward.approved'
        WHEN NEW.to_state = 'paid' THEN 'reward.paid'
        WHEN NEW.to_state = 'reversed' THEN 'reward.reversed'
        WHEN NEW.to_state = 'rejected' THEN 'reward.rejected'
        WHEN NEW.to_state = 'held' THEN 'reward.held'
        WHEN NEW.to_state = 'pending' AND NEW.from_state = 'held' THEN 'reward.released'
    END;
    IF event_type IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT id, program_id, advocate_id, conversion_id, beneficiary, customer_id, amount_minor,
           currency INTO r FROM rewards WHERE id = NEW.reward_id;
    PERFORM announce(NEW.merchant_id, event_type, jsonb_build_object(
        'reward_id', r.id, 'program_id', r.program_id, 'advocate_id', r.advocate_id,
        'conversion_id', r.conversion_id, 'beneficiary', r.beneficiary,
        'customer_id', r.customer_id, 'reward_amount_minor', r.amount_minor,
        'currency', trim(r.currency), 'from_state', NEW.from_state, 'to_state', NEW.to_state,
        'amount_minor', NEW.amount_minor, 'reason', NEW.reason, 'entry_id', NEW.id));
    RETURN NEW;
END;
$$;
-- Deferred to the commit, like those below, so that events come in the order their changes were
-- made (a conversion's attribution before its rewards) and carry each row as it was committed.
CREATE CONSTRAINT TRIGGER reward_entries_announce AFTER INSERT ON reward_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION announce_reward_entry();

-- A conversion is announced once processed: attributed (to whom, how, why) or not (why not).
CREATE FUNCTION announce_conversion() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    SELECT * INTO c FROM conversions WHERE id = NEW.id;
    IF c.type NOT IN ('signup', 'purchase', 'renewal')
       OR c.state NOT IN ('attributed', 'unattributed') THEN
        RETURN NULL;
    END IF;
    PERFORM announce(c.merchant_id, 'conversion.' || c.state, jsonb_build_object(
        'conversion_id', c.id, 'event_id', c.event_id, 'type', c.type, 'order_id', c.order_id,
        'customer_id', c.customer_id, 'amount_minor', c.amount_minor,
        'currency', trim(c.currency), 'program_id', c.program_id, 'advocate_id', c.advocate_id,
        'attribution_method', c.attribution_method, 'reason', c.reason,
        'fraud_action', c.fraud_action, 'occurred_at', c.occurred_at));
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER conversions_announce AFTER INSERT ON conversions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION announce_conversion();

CREATE FUNCTION announce_advocate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    a record;
BEGIN
    SELECT * INTO a FROM advocates WHERE id = NEW.id;
    IF a.id IS NOT NULL THEN
        PERFORM announce(a.merchant_id, 'advocate.enrolled', jsonb_build_object(
            'advocate_id', a.id, 'program_id', a.program_id, 'external_id', a.external_id,
            'name', a.name, 'referral_code', a.referral_code));
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER advocates_announce AFTER INSERT ON advocates
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION announce_advocate();

CREATE FUNCTION announce_review_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM announce(NEW.merchant_id, 'review.opened', jsonb_build_object(
            'review_id', NEW.id, 'conversion_id', NEW.conversion_id,
            'advocate_id', NEW.advocate_id, 'program_id', NEW.program_id, 'rules', NEW.rules));
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'open' THEN
        PERFORM announce(NEW.merchant_id, 'review.resolved', jsonb_build_object(
            'review_id', NEW.id, 'conversion_id', NEW.conversion_id,
            'advocate_id', NEW.advocate_id, 'decision', NEW.status, 'note', NEW.note));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER review_items_announce AFTER INSERT OR UPDATE OF status ON review_items
    FOR EACH ROW EXECUTE FUNCTION announce_review_item();

CREATE FUNCTION announce_payout() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b record;
    totals jsonb;
BEGIN
    SELECT * INTO b FROM payout_batches WHERE id = NEW.id;
    IF TG_OP = 'UPDATE' AND (b.status NOT IN ('completed', 'failed')
                             OR OLD.status = NEW.status) THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(jsonb_object_agg(currency, total), '{}') INTO totals FROM (
        SELECT trim(currency) AS currency, sum(amount_minor) AS total FROM payout_lines
        WHERE batch_id = b.id AND status <> 'failed' GROUP BY currency) t;
    PERFORM announce(b.merchant_id,
        CASE WHEN TG_OP = 'INSERT' THEN 'payout.created' ELSE 'payout.' || b.status END,
        jsonb_build_object('payout_id', b.id, 'status', b.status, 'program_id', b.program_id,
                           'totals_minor', totals,
                           'lines', (SELECT count(*) FROM payout_lines WHERE batch_id = b.id)));
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER payout_batches_announce AFTER INSERT OR UPDATE OF status
    ON payout_batches DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION announce_payout();
