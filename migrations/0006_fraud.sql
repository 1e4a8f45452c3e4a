-- Fraud defences: the signals the rules read, each conversion's decision, a held ledger state,
-- the review queue and banned advocates (see the README's "Fraud and security" section).

-- Emails are compared, never stored. Besides the plain hash, each side keeps the hash of the
-- canonical address (case, `+tag` and Gmail dots removed) and the hashes of its one-character
-- deletions (for "within one edit" without the address itself).
ALTER TABLE advocates ADD COLUMN email_canonical bytea;
ALTER TABLE advocates ADD COLUMN email_near bytea[] NOT NULL DEFAULT '{}';
-- A banned advocate's links stop redirecting, and their conversions earn nothing.
ALTER TABLE advocates ADD COLUMN banned_at timestamptz;
ALTER TABLE advocates ADD COLUMN ban_reason text;

ALTER TABLE conversions ADD COLUMN customer_email_canonical bytea;
ALTER TABLE conversions ADD COLUMN customer_email_near bytea[] NOT NULL DEFAULT '{}';
ALTER TABLE conversions ADD COLUMN customer_email_disposable boolean;
-- The fraud decision: off (no rule fired) | flag | hold | reject, the rules that fired (each
-- with its values, threshold, action and reason), and the rules version that decided.
ALTER TABLE conversions ADD COLUMN fraud_action text NOT NULL DEFAULT 'none'
    CHECK (fraud_action IN ('none', 'flag', 'hold', 'reject'));
ALTER TABLE conversions ADD COLUMN fraud_findings jsonb NOT NULL DEFAULT '[]';
CREATE INDEX conversions_advocate_time_idx ON conversions (advocate_id, occurred_at)
    WHERE advocate_id IS NOT NULL;
CREATE INDEX conversions_customer_email_idx ON conversions (merchant_id, customer_email_canonical)
    WHERE customer_email_canonical IS NOT NULL;

-- The ad network's click-id parameter the click's landing query carried (its name only, e.g.
-- 'gclid': paid traffic routed through a referral link), and clicks found in a flood.
ALTER TABLE clicks ADD COLUMN ad_click_param text;
ALTER TABLE clicks ADD COLUMN flood boolean NOT NULL DEFAULT false;
-- Flagged clicks are counted apart in the daily counts (moved out of `human` by the sweep).
ALTER TABLE program_click_counts ADD COLUMN flagged bigint NOT NULL DEFAULT 0;
-- How far the click-flood sweep has looked, per program.
CREATE TABLE click_flood_sweeps (
    program_id  uuid PRIMARY KEY REFERENCES programs (id) ON DELETE CASCADE,
    swept_until timestamptz NOT NULL
);

-- A held amount waits for a person: the scheduler never approves it.
ALTER TABLE reward_entries DROP CONSTRAINT reward_entries_from_state_check;
ALTER TABLE reward_entries ADD CONSTRAINT reward_entries_from_state_check
    CHECK (from_state IN ('pending', 'held', 'approved', 'paid'));
ALTER TABLE reward_entries DROP CONSTRAINT reward_entries_to_state_check;
ALTER TABLE reward_entries ADD CONSTRAINT reward_entries_to_state_check
    CHECK (to_state IN ('pending', 'held', 'approved', 'paid', 'reversed', 'rejected'));

CREATE OR REPLACE VIEW reward_balances AS
SELECT r.id AS reward_id, r.merchant_id, r.program_id, r.advocate_id, r.beneficiary, r.currency,
       s.state,
       coalesce(sum(e.amount_minor) FILTER (WHERE e.to_state = s.state), 0)
     - coalesce(sum(e.amount_minor) FILTER (WHERE e.from_state = s.state), 0) AS amount_minor
FROM rewards r
CROSS JOIN (VALUES ('pending'), ('approved'), ('paid'), ('reversed'), ('rejected'), ('held'))
    AS s (state)
LEFT JOIN reward_entries e ON e.reward_id = r.id
GROUP BY r.id, s.state;

-- The review queue: one item per held conversion, decided once by a person (which API key,
-- when, a note). Decisions: approve (held rewards continue to their normal hold), reject,
-- ban_advocate.
CREATE TABLE review_items (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id   uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    program_id    uuid NOT NULL,
    advocate_id   uuid NOT NULL,
    conversion_id uuid NOT NULL UNIQUE REFERENCES conversions (id),
    rules         text[] NOT NULL,      -- the rules that held it
    opened_at     timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'approved', 'rejected', 'banned')),
    decided_at    timestamptz,
    decided_by    uuid REFERENCES api_keys (id),
    note          text
);
CREATE INDEX review_items_open_idx ON review_items (merchant_id, opened_at, id)
    WHERE status = 'open';
CREATE INDEX review_items_advocate_idx ON review_items (merchant_id, advocate_id);
