-- Hardening against hostile input and races (see the README's Security section).

-- Events the flusher could not store, each with its error, for a person to look at and replay
-- (`referral dead-letters`, `referral replay-dead-letters`). In PostgreSQL, not in Redis: they
-- are kept until replayed, and Redis holds only the backlog.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    payload     bytea NOT NULL,   -- the events as a JSON array, as they left the stream
    events      integer NOT NULL,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX dead_letters_pending_idx ON dead_letters (stream, id) WHERE replayed_at IS NULL;

-- Every browser that claimed an order through the pixel, not only the first: a claim counts as
-- evidence only when it is the order's only one.
ALTER TABLE order_pixels DROP CONSTRAINT order_pixels_pkey;
ALTER TABLE order_pixels ADD PRIMARY KEY (merchant_id, order_id, visitor_id);

-- What a refund asked for (NULL: the whole order), so that a refund processed before its purchase
-- is applied when the purchase arrives.
ALTER TABLE conversions ADD COLUMN requested_amount_minor bigint
    CHECK (requested_amount_minor >= 0);
UPDATE conversions SET requested_amount_minor = nullif(amount_minor, 0)
WHERE type = 'refund' AND state = 'refund_unmatched';

-- A refund with nothing left to refund on its order is refused, with the reason.
ALTER TABLE conversions DROP CONSTRAINT conversions_state_check;
ALTER TABLE conversions ADD CONSTRAINT conversions_state_check
    CHECK (state IN ('attributed', 'unattributed', 'refunded', 'refund_unmatched', 'superseded',
                     'refund_refused'));

-- Link changes committed here but not yet written through to Redis (a transactional outbox): the
-- API relays them until Redis has them, so a disabled link cannot keep redirecting.
CREATE TABLE link_outbox (
    code      text PRIMARY KEY,
    queued_at timestamptz NOT NULL DEFAULT now()
);
