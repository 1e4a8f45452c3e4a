-- Conversions, versioned program rules, rewards and the append-only reward ledger.

-- A program's rules, one row per version. Rewards record the version they were computed with, so
-- a change never rewrites past rewards. The JSON is validated by app.attribution.rules.
CREATE TABLE program_rules (
    program_id uuid NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    version    integer NOT NULL CHECK (version > 0),
    rules      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, version)
);
INSERT INTO program_rules (program_id, version, rules)
SELECT id, 1, jsonb_build_object('attribution_window_days', attribution_window_days) FROM programs;

CREATE TABLE conversions (
    -- uuid5 of (merchant, event_id): a retried postback maps to the same id before any lookup.
    id                  uuid PRIMARY KEY,
    merchant_id         uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    event_id            text NOT NULL,
    type                text NOT NULL CHECK (type IN ('signup', 'purchase', 'refund')),
    order_id            text,
    refund_of           text,         -- for a refund: the order id of the purchase refunded
    customer_id         text,
    customer_email_hash bytea,
    amount_minor        bigint NOT NULL DEFAULT 0 CHECK (amount_minor >= 0),
    currency            char(3),
    click_id            uuid,
    referral_code       text,
    visitor_id          uuid,
    ip_hash             bytea,
    ip_prefix           text,
    user_agent          text,
    occurred_at         timestamptz NOT NULL,
    received_at         timestamptz NOT NULL,
    state               text NOT NULL CHECK (state IN ('attributed', 'unattributed', 'refunded',
                                                       'refund_unmatched')),
    program_id          uuid,
    advocate_id         uuid,
    attributed_click_id uuid,
    attribution_method  text CHECK (attribution_method IN ('referral_code', 'click_id', 'cookie')),
    reason              text NOT NULL DEFAULT '',   -- why: in words a person can read
    rules_version       integer,
    processed_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, event_id)
);
CREATE INDEX conversions_order_idx ON conversions (merchant_id, order_id) WHERE order_id IS NOT NULL;
CREATE INDEX conversions_refund_idx ON conversions (merchant_id, refund_of) WHERE refund_of IS NOT NULL;
CREATE INDEX conversions_advocate_idx ON conversions (merchant_id, advocate_id, type);
CREATE INDEX conversions_customer_idx ON conversions (merchant_id, program_id, customer_id);

CREATE TABLE rewards (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id   uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    program_id    uuid NOT NULL,
    advocate_id   uuid NOT NULL,
    conversion_id uuid NOT NULL REFERENCES conversions (id),
    beneficiary   text NOT NULL CHECK (beneficiary IN ('advocate', 'friend')),
    customer_id   text,          -- the referred friend (the beneficiary of a friend reward)
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    currency      char(3) NOT NULL,
    rules_version integer NOT NULL,
    hold_until    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversion_id, beneficiary)
);
CREATE INDEX rewards_advocate_idx ON rewards (merchant_id, advocate_id);
CREATE INDEX rewards_hold_idx ON rewards (hold_until);

-- The ledger. Every state change of a reward is a row: `amount_minor` moves from `from_state`
-- (NULL when the reward is created) to `to_state`. A reward's amount in a state is what entered
-- it minus what left it; nothing is ever updated or deleted.
CREATE TABLE reward_entries (
    id            bigserial PRIMARY KEY,
    reward_id     uuid NOT NULL REFERENCES rewards (id),
    merchant_id   uuid NOT NULL,
    from_state    text CHECK (from_state IN ('pending', 'approved', 'paid')),
    to_state      text NOT NULL CHECK (to_state IN ('pending', 'approved', 'paid', 'reversed',
                                                    'rejected')),
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    reason        text NOT NULL,
    conversion_id uuid,          -- the refund behind a reversal
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reward_entries_reward_idx ON reward_entries (reward_id);
CREATE INDEX reward_entries_merchant_idx ON reward_entries (merchant_id, created_at);

CREATE FUNCTION reward_entries_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'reward_entries is append-only: add an entry instead';
END;
$$;
CREATE TRIGGER reward_entries_append_only BEFORE UPDATE OR DELETE ON reward_entries
    FOR EACH ROW EXECUTE FUNCTION reward_entries_are_append_only();

-- Each reward's amount per state, summed from the ledger.
CREATE VIEW reward_balances AS
SELECT r.id AS reward_id, r.merchant_id, r.program_id, r.advocate_id, r.beneficiary, r.currency,
       s.state,
       coalesce(sum(e.amount_minor) FILTER (WHERE e.to_state = s.state), 0)
     - coalesce(sum(e.amount_minor) FILTER (WHERE e.from_state = s.state), 0) AS amount_minor
FROM rewards r
CROSS JOIN (VALUES ('pending'), ('approved'), ('paid'), ('reversed'), ('rejected')) AS s (state)
LEFT JOIN reward_entries e ON e.reward_id = r.id
GROUP BY r.id, s.state;
