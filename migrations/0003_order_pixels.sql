-- Cookie evidence from the order-confirmation pixel: which browser (our visitor id) placed an
-- order. A signed postback for the same order uses it as cookie evidence.
CREATE TABLE order_pixels (
    merchant_id  uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    order_id     text NOT NULL,
    visitor_id   uuid NOT NULL,
    amount_minor bigint CHECK (amount_minor >= 0),
    currency     char(3),
    seen_at      timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
);

-- A conversion known only from the pixel is unverified (anyone can load an image): it is
-- attributed for statistics but earns nothing, and is superseded by a signed postback.
ALTER TABLE conversions ADD COLUMN verified boolean NOT NULL DEFAULT true;
ALTER TABLE conversions DROP CONSTRAINT conversions_state_check;
ALTER TABLE conversions ADD CONSTRAINT conversions_state_check
    CHECK (state IN ('attributed', 'unattributed', 'refunded', 'refund_unmatched', 'superseded'));
