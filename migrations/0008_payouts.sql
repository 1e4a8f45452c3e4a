-- Money out: payout batches and their lines, advocates' payout details, what advocates owe
-- after a clawback, reconciliation reports, renewals, and exchange rates (see the README's
-- "Month end: payouts and reconciliation").

-- `reserved`: in a payout batch not yet completed or failed (nothing else may take it).
ALTER TABLE reward_entries DROP CONSTRAINT reward_entries_from_state_check;
ALTER TABLE reward_entries ADD CONSTRAINT reward_entries_from_state_check
    CHECK (from_state IN ('pending', 'held', 'approved', 'reserved', 'paid'));
ALTER TABLE reward_entries DROP CONSTRAINT reward_entries_to_state_check;
ALTER TABLE reward_entries ADD CONSTRAINT reward_entries_to_state_check
    CHECK (to_state IN ('pending', 'held', 'approved', 'reserved', 'paid', 'reversed', 'rejected'));

CREATE OR REPLACE VIEW reward_balances AS
SELECT r.id AS reward_id, r.merchant_id, r.program_id, r.advocate_id, r.beneficiary, r.currency,
       s.state,
       coalesce(sum(e.amount_minor) FILTER (WHERE e.to_state = s.state), 0)
     - coalesce(sum(e.amount_minor) FILTER (WHERE e.from_state = s.state), 0) AS amount_minor
FROM rewards r
CROSS JOIN (VALUES ('pending'), ('approved'), ('paid'), ('reversed'), ('rejected'), ('held'),
                   ('reserved')) AS s (state)
LEFT JOIN reward_entries e ON e.reward_id = r.id
GROUP BY r.id, s.state;
CREATE INDEX reward_entries_state_idx ON reward_entries (merchant_id, to_state);

-- Where an advocate is paid.
ALTER TABLE advocates ADD COLUMN payout_email text;      -- PayPal and Wise (send by email)
ALTER TABLE advocates ADD COLUMN payout_name text;       -- the name Wise shows the recipient
ALTER TABLE advocates ADD COLUMN payout_reference text;  -- the merchant's own (manual payouts)

CREATE TABLE payout_batches (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id     uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    idempotency_key text NOT NULL,
    request_digest  text NOT NULL,     -- the same key with another request is a 409
    program_id      uuid,              -- NULL: every program of the merchant
    status          text NOT NULL DEFAULT 'created'
                    CHECK (status IN ('created', 'sent', 'completed', 'failed')),
    skipped         jsonb NOT NULL DEFAULT '[]',   -- balances not paid, each with its reason
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    finished_at     timestamptz,
    UNIQUE (merchant_id, idempotency_key)
);

CREATE TABLE payout_lines (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id      uuid NOT NULL REFERENCES payout_batches (id) ON DELETE CASCADE,
    merchant_id   uuid NOT NULL,
    advocate_id   uuid NOT NULL,
    currency      char(3) NOT NULL,
    gross_minor   bigint NOT NULL CHECK (gross_minor > 0),       -- the approved rewards reserved
    clawback_minor bigint NOT NULL DEFAULT 0 CHECK (clawback_minor >= 0), -- owed, netted here
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),      -- what is sent: gross - clawback
    reward_ids    uuid[] NOT NULL,
    status        text NOT NULL DEFAULT 'created'
                  CHECK (status IN ('created', 'sent', 'completed', 'failed')),
    failure       text,
    finished_at   timestamptz,
    CHECK (amount_minor = gross_minor - clawback_minor)
);
CREATE INDEX payout_lines_batch_idx ON payout_lines (batch_id);
CREATE INDEX payout_lines_advocate_idx ON payout_lines (merchant_id, advocate_id, currency);

-- What advocates owe after money already paid (or in flight) was reversed: +amount when a
-- clawback is made, -amount when a completed payout line nets it, or when a line fails and the
-- money reversed in flight was never sent. Append-only, like the ledger.
CREATE TABLE advocate_owed (
    id            bigserial PRIMARY KEY,
    merchant_id   uuid NOT NULL,
    advocate_id   uuid NOT NULL,
    currency      char(3) NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor <> 0),
    reason        text NOT NULL,
    reward_id     uuid,
    line_id       uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX advocate_owed_idx ON advocate_owed (merchant_id, advocate_id, currency);
CREATE TRIGGER advocate_owed_append_only BEFORE UPDATE OR DELETE ON advocate_owed
    FOR EACH ROW EXECUTE FUNCTION reward_entries_are_append_only();

-- Reconciliation: the shop's orders for a period, the differences found, and when (once) the
-- report was applied.
CREATE TABLE reconciliation_reports (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id  uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    orders       integer NOT NULL,
    differences  jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    applied      jsonb
);
CREATE INDEX reconciliation_reports_idx ON reconciliation_reports (merchant_id, created_at);

-- Renewals: a subscription's later invoices, tied to its first purchase.
ALTER TABLE conversions ADD COLUMN subscription_id text;
ALTER TABLE conversions DROP CONSTRAINT conversions_type_check;
ALTER TABLE conversions ADD CONSTRAINT conversions_type_check
    CHECK (type IN ('signup', 'purchase', 'refund', 'renewal'));
CREATE INDEX conversions_subscription_idx ON conversions (merchant_id, subscription_id)
    WHERE subscription_id IS NOT NULL;

-- Exchange rates the merchant posts: 1 `base` = `rate` `quote`, for a UTC day.
CREATE TABLE exchange_rates (
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    base        char(3) NOT NULL,
    quote       char(3) NOT NULL,
    day         date NOT NULL,
    rate        numeric NOT NULL CHECK (rate > 0),
    PRIMARY KEY (merchant_id, base, quote, day)
);
-- A reward of an order in another currency records the order's amount and the rate used.
ALTER TABLE rewards ADD COLUMN fx_rate numeric;
ALTER TABLE rewards ADD COLUMN order_currency char(3);
ALTER TABLE rewards ADD COLUMN order_amount_minor bigint;
-- A renewal is attributed through its subscription's first purchase.
ALTER TABLE conversions DROP CONSTRAINT conversions_attribution_method_check;
ALTER TABLE conversions ADD CONSTRAINT conversions_attribution_method_check
    CHECK (attribution_method IN ('referral_code', 'click_id', 'cookie', 'subscription'));
