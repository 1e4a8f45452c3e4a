-- Schema v1: tenants, programs, advocates, links and the click log.
-- Every tenant-owned row carries merchant_id, and every query filters on it: that is how one
-- merchant never sees another's data.

CREATE TABLE merchants (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Shared secret for signing conversion webhooks (HMAC needs the secret itself, not a hash).
    webhook_secret text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as SHA-256 of the key: they are 256-bit random tokens, so a fast hash is
-- enough (no password stretching needed), and a leaked table does not leak usable keys.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE programs (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id             uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    destination_url         text NOT NULL,
    allowed_domains         text[] NOT NULL,
    attribution_window_days integer NOT NULL DEFAULT 30 CHECK (attribution_window_days BETWEEN 1 AND 365),
    active                  boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, id)
);

CREATE TABLE advocates (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id   uuid NOT NULL,
    program_id    uuid NOT NULL,
    external_id   text NOT NULL,          -- the merchant's own customer id
    name          text NOT NULL DEFAULT '',
    email_hash    bytea,                  -- sha256 of the normalised email, never the email
    referral_code text NOT NULL,          -- typed at checkout, e.g. ANNA-7K3Q
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (merchant_id, program_id) REFERENCES programs (merchant_id, id),
    UNIQUE (merchant_id, id),
    UNIQUE (program_id, external_id),
    UNIQUE (merchant_id, referral_code)
);

CREATE TABLE links (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text NOT NULL UNIQUE,
    merchant_id uuid NOT NULL,
    program_id  uuid NOT NULL,
    advocate_id uuid NOT NULL,
    destination text NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('default', 'email', 'whatsapp', 'sms', 'qr',
                                                 'facebook', 'x', 'instagram', 'linkedin', 'other')),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (merchant_id, program_id) REFERENCES programs (merchant_id, id),
    FOREIGN KEY (merchant_id, advocate_id) REFERENCES advocates (merchant_id, id)
);
CREATE INDEX links_advocate_idx ON links (merchant_id, advocate_id);

-- The click log, partitioned by month. The primary key includes clicked_at (a partitioned table's
-- unique keys must contain the partition key); the click id embeds its timestamp, so a click
-- delivered twice always lands in the same partition and the second copy is a conflict.
CREATE TABLE clicks (
    click_id    uuid NOT NULL,
    clicked_at  timestamptz NOT NULL,
    link_id     uuid NOT NULL,
    merchant_id uuid NOT NULL,
    program_id  uuid NOT NULL,
    advocate_id uuid NOT NULL,
    visitor_id  uuid,                     -- our first-party cookie: one browser across clicks
    ip_hash     bytea,                    -- keyed BLAKE2b of the full address
    ip_prefix   text,                     -- /24 (IPv4) or /48 (IPv6), never the full address
    user_agent  text,
    referer     text,
    method      text NOT NULL DEFAULT 'GET',
    is_bot      boolean NOT NULL DEFAULT false,
    bot_reason  text,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (click_id, clicked_at)
) PARTITION BY RANGE (clicked_at);

CREATE TABLE clicks_default PARTITION OF clicks DEFAULT;
CREATE INDEX clicks_merchant_time_idx ON clicks (merchant_id, clicked_at);
CREATE INDEX clicks_link_time_idx ON clicks (link_id, clicked_at);
CREATE INDEX clicks_advocate_time_idx ON clicks (advocate_id, clicked_at);
CREATE INDEX clicks_visitor_idx ON clicks (visitor_id, clicked_at) WHERE visitor_id IS NOT NULL;

-- Creates the monthly partitions from the month of `start` for `months` months. Called by the
-- flusher at start-up and every hour, so the default partition normally stays empty.
CREATE FUNCTION ensure_click_partitions(start timestamptz, months integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month_start date;
    part_name   text;
BEGIN
    FOR i IN 0..months - 1 LOOP
        month_start := (date_trunc('month', start AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        part_name := format('clicks_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(part_name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF clicks FOR VALUES FROM (%L) TO (%L)',
                    part_name,
                    (month_start::timestamp AT TIME ZONE 'UTC'),
                    ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
            EXCEPTION WHEN check_violation OR duplicate_table THEN
                -- Rows for that month already sit in the default partition (or another flusher
                -- won the race): keep them there rather than fail.
                NULL;
            END;
        END IF;
    END LOOP;
END;
$$;

SELECT ensure_click_partitions(now() - interval '1 month', 4);
