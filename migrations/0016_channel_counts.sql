-- A program's clicks per day and channel (email, WhatsApp, QR, …), kept by the flusher beside
-- program_click_counts in the same transaction, so that the dashboard's breakdown by channel
-- reads a few rows instead of the click log (#19). Upgrade with the flushers stopped, as for
-- migration 0004: the counts are taken from the stored clicks here.
CREATE TABLE program_channel_counts (
    program_id  uuid NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    day         date NOT NULL,          -- UTC
    channel     text NOT NULL,
    merchant_id uuid NOT NULL,
    human       bigint NOT NULL DEFAULT 0,
    bot         bigint NOT NULL DEFAULT 0,
    flagged     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, day, channel)
);

LOCK TABLE clicks IN SHARE MODE;  -- no click stored while the counts are taken
INSERT INTO program_channel_counts (program_id, day, channel, merchant_id, human, bot, flagged)
SELECT c.program_id, (c.clicked_at AT TIME ZONE 'UTC')::date, l.channel, c.merchant_id,
       count(*) FILTER (WHERE NOT c.is_bot AND NOT c.flood), count(*) FILTER (WHERE c.is_bot),
       count(*) FILTER (WHERE c.flood AND NOT c.is_bot)
FROM clicks c JOIN links l ON l.id = c.link_id
GROUP BY 1, 2, 3, 4;
